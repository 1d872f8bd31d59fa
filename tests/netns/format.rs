//! First-boot format against the real kernel: loop devices over image files,
//! formatted through `sys::mkfs::format_if_blank` (the boot's own code path),
//! then mounted. Devices that are not blank are never written: their bytes hash
//! the same before and after.
//!
//! Needs root, the loop and ext4 drivers, mkfs.ext4, mkfs.f2fs (f2fs-tools) and
//! mkfs.vfat. Each test runs in a private mount namespace (see support::namespace).
//!
//! Run: `cargo test --test netns format::`

use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{in_private_mount_namespace, run, Loop, Mounted};
use overlay_init::fstype::FsType;
use overlay_init::probe::blank::{
    fs_size_for, marker_offset, BlankKind, Classification, FormatMarker, MARKER_BYTES,
};
use overlay_init::sys::mkfs::{classify_device, format_if_blank, FormatRequest};

const SIZE: u64 = 64 << 20;

fn image(dir: &Path, name: &str, fill: u8) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, vec![fill; SIZE as usize]).unwrap();
    path
}

fn hash(path: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(&fs::read(path).unwrap());
    hasher.finish()
}

fn request(fstype: FsType, label: &str) -> FormatRequest<'_> {
    FormatRequest {
        fstype,
        label,
        lower_root: None,
        timeout: Duration::from_secs(60),
    }
}

fn marker_sector(image: &Path) -> Vec<u8> {
    let bytes = fs::read(image).unwrap();
    let at = marker_offset(SIZE).unwrap() as usize;
    bytes[at..at + MARKER_BYTES].to_vec()
}

#[test]
fn zeroed_disk_is_formatted_ext4_and_mounts() {
    in_private_mount_namespace("zeroed_disk_is_formatted_ext4_and_mounts", |dir| {
        let img = image(dir, "zeroed.img", 0x00);
        let dev = Loop::attach(&img, false);
        assert_eq!(
            classify_device(&dev.dev).unwrap(),
            Classification::Blank(BlankKind::Zeroed)
        );
        let report = format_if_blank(&dev.dev, &request(FsType::Ext4, "overlay")).unwrap();
        let line = report.to_string();
        eprintln!("{line}");
        assert!(
            line.starts_with(&format!(
                "formatted {} (ext4, label overlay, 64 MiB) in ",
                dev.dev.display()
            )),
            "{line}"
        );
        assert!(line.ends_with(" ms"), "{line}");
        // The commit cleared the marker; the device now reads as our upper.
        assert_eq!(marker_sector(&img), vec![0u8; MARKER_BYTES]);
        match classify_device(&dev.dev).unwrap() {
            Classification::Usable(info) => {
                assert_eq!(info.fstype(), Some(FsType::Ext4));
                assert_eq!(info.label.as_deref(), Some("overlay"));
            }
            other => panic!("after the format: {other:?}"),
        }
        let target = dir.join("mnt");
        fs::create_dir_all(&target).unwrap();
        let mounted = Mounted::with_mount_command(
            &["-t".as_ref(), "ext4".as_ref(), dev.dev.as_os_str()],
            &target,
        );
        fs::write(target.join("kept"), "across boots\n").unwrap();
        let df = run(Command::new("df")
            .args(["-B1", "--output=size"])
            .arg(&target));
        let fs_bytes: u64 = df.lines().last().unwrap().trim().parse().unwrap();
        assert!(fs_bytes <= fs_size_for(SIZE).unwrap(), "{fs_bytes}");
        mounted.unmount();
        // A second run refuses: the device is no longer blank.
        let again = format_if_blank(&dev.dev, &request(FsType::Ext4, "overlay")).unwrap_err();
        assert!(
            format!("{again:#}").contains("already holds ext4 (label overlay)"),
            "{again:#}"
        );
    });
}

#[test]
fn erased_disk_is_formatted_f2fs() {
    in_private_mount_namespace("erased_disk_is_formatted_f2fs", |dir| {
        let img = image(dir, "erased.img", 0xFF);
        let dev = Loop::attach(&img, false);
        assert_eq!(
            classify_device(&dev.dev).unwrap(),
            Classification::Blank(BlankKind::Erased)
        );
        let report = format_if_blank(&dev.dev, &request(FsType::F2fs, "rootfs_data")).unwrap();
        eprintln!("{report}");
        assert!(report
            .to_string()
            .contains("(f2fs, label rootfs_data, 64 MiB)"));
        // (This host kernel may lack f2fs: the probe, which checks the geometry the
        // kernel needs, stands in for a mount; the QEMU tests mount it.)
        match classify_device(&dev.dev).unwrap() {
            Classification::Usable(info) => {
                assert_eq!(info.fstype(), Some(FsType::F2fs));
                assert_eq!(info.label.as_deref(), Some("rootfs_data"));
            }
            other => panic!("after the format: {other:?}"),
        }
        let blkid = run(Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&dev.dev));
        assert!(
            blkid.contains("TYPE=f2fs") && blkid.contains("LABEL=rootfs_data"),
            "{blkid}"
        );
    });
}

#[test]
fn an_interrupted_format_is_formatted_again() {
    in_private_mount_namespace("an_interrupted_format_is_formatted_again", |dir| {
        // What a cut mke2fs leaves: the marker, and metadata in the first MiB but
        // no superblock yet.
        let img = image(dir, "cut.img", 0x00);
        let mut bytes = fs::read(&img).unwrap();
        for (i, b) in bytes[2048..300 * 1024].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let marker = FormatMarker {
            device_size: SIZE,
            fs_size: fs_size_for(SIZE).unwrap(),
            fstype: FsType::Ext4,
        };
        let at = marker_offset(SIZE).unwrap() as usize;
        bytes[at..at + MARKER_BYTES].copy_from_slice(&marker.encode());
        fs::write(&img, &bytes).unwrap();
        let dev = Loop::attach(&img, false);
        assert_eq!(
            classify_device(&dev.dev).unwrap(),
            Classification::Interrupted(marker)
        );
        let report = format_if_blank(&dev.dev, &request(FsType::Ext4, "overlay")).unwrap();
        assert!(report.to_string().contains("cut short"), "{report}");
        assert!(matches!(
            classify_device(&dev.dev).unwrap(),
            Classification::Usable(_)
        ));
    });
}

#[test]
fn devices_that_are_not_blank_are_never_written() {
    in_private_mount_namespace("devices_that_are_not_blank_are_never_written", |dir| {
        let random = dir.join("random.img");
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let bytes: Vec<u8> = (0..SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(&random, bytes).unwrap();
        let vfat = image(dir, "vfat.img", 0x00);
        run(Command::new("mkfs.vfat").arg(&vfat));
        // A LUKS2 container over zeroes (cryptsetup writes only its headers).
        let luks = image(dir, "luks.img", 0x00);
        let mut format = Command::new("cryptsetup")
            .args([
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
            ])
            .args(["--pbkdf-force-iterations", "1000", "--key-file", "-"])
            .arg(&luks)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cryptsetup (cryptsetup-bin)");
        use std::io::Write;
        format.stdin.take().unwrap().write_all(b"x").unwrap();
        assert!(format.wait().unwrap().success());
        // Zeroes except one byte in the middle of the first MiB.
        let almost = image(dir, "almost.img", 0x00);
        let mut bytes = fs::read(&almost).unwrap();
        bytes[512 * 1024] = 1;
        fs::write(&almost, bytes).unwrap();

        for (img, expect) in [
            (&random, "neither zeroed nor erased"),
            (&vfat, "holds vfat"),
            (&luks, "holds crypto_LUKS"),
            (&almost, "first MiB that is neither zeroed nor erased"),
        ] {
            let before = hash(img);
            let dev = Loop::attach(img, false);
            for fstype in [FsType::Ext4, FsType::F2fs] {
                let err = format_if_blank(&dev.dev, &request(fstype, "overlay")).unwrap_err();
                let err = format!("{err:#}");
                assert!(err.contains(expect), "{}: {err}", img.display());
                assert!(err.contains("not formatted"), "{err}");
            }
            drop(dev);
            assert_eq!(hash(img), before, "{} was written", img.display());
        }
    });
}

/// The lower's own mkfs: an initramfs built with `--binary /sbin/mkfs.ext4` and
/// `--binary /sbin/mkfs.f2fs` is unpacked with cpio and serves as the lower; the
/// host's mkfs is hidden, so the formatter must run the tree's own, chrooted, with
/// /dev and /proc bound in. That it formats also shows the cpio holds every
/// library the programs need.
#[test]
fn the_lowers_own_mkfs_runs_chrooted() {
    in_private_mount_namespace("the_lowers_own_mkfs_runs_chrooted", |dir| {
        use overlay_init::initramfs::{assemble, binary_files};
        let files = binary_files(&["/sbin/mkfs.ext4".into(), "/sbin/mkfs.f2fs".into()]).unwrap();
        let cpio = assemble(b"not an init".to_vec(), Vec::new(), files)
            .unwrap()
            .to_newc();
        let lower = dir.join("lower");
        fs::create_dir_all(lower.join("dev")).unwrap();
        let mut child = Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&lower)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&cpio).unwrap();
        assert!(child.wait().unwrap().success());
        // Read-only, as a lower is.
        let _ro_lower = Mounted::bind(&lower, &lower);
        run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&lower));

        let ext4_img = image(dir, "ext4.img", 0x00);
        let f2fs_img = image(dir, "f2fs.img", 0xFF);
        let ext4_dev = Loop::attach(&ext4_img, false);
        let f2fs_dev = Loop::attach(&f2fs_img, false);
        let blank = image(dir, "blank.img", 0x00);
        let before = hash(&blank);
        let blank_dev = Loop::attach(&blank, false);
        // Hide the host's mkfs (declared last: unmounted before the loop devices
        // are detached with the host's losetup).
        let empty = dir.join("empty");
        let hidden: Vec<Mounted> = ["/usr/sbin", "/usr/bin"]
            .iter()
            .map(|d| Mounted::bind(&empty_dir(&empty), Path::new(d)))
            .collect();
        assert!(!Path::new("/sbin/mkfs.ext4").exists());

        for (dev, fstype) in [(&ext4_dev, FsType::Ext4), (&f2fs_dev, FsType::F2fs)] {
            let request = FormatRequest {
                lower_root: Some(&lower),
                ..request(fstype, "overlay")
            };
            let report = format_if_blank(&dev.dev, &request).unwrap();
            eprintln!("{report} with {}", report.tool);
            assert_eq!(report.tool.root.as_deref(), Some(lower.as_path()));
            match classify_device(&dev.dev).unwrap() {
                Classification::Usable(info) => {
                    assert_eq!(info.fstype(), Some(fstype));
                    assert_eq!(info.label.as_deref(), Some("overlay"));
                }
                other => panic!("after the format: {other:?}"),
            }
        }
        // The binds for the chroot are gone again.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&format!("{}/dev ", lower.display())),
            "{mounts}"
        );
        assert!(
            !mounts.contains(&format!("{}/proc ", lower.display())),
            "{mounts}"
        );

        // Without a mkfs anywhere: a clear error, the device untouched.
        let no_mkfs = dir.join("no-mkfs");
        fs::create_dir_all(&no_mkfs).unwrap();
        let request = FormatRequest {
            lower_root: Some(&no_mkfs),
            ..request(FsType::Ext4, "overlay")
        };
        let err = format!(
            "{:#}",
            format_if_blank(&blank_dev.dev, &request).unwrap_err()
        );
        assert!(
            err.contains("no mkfs for ext4 in the initramfs nor in the lower"),
            "{err}"
        );
        drop(hidden);
        drop(blank_dev);
        assert_eq!(hash(&blank), before);
    });
}

fn empty_dir(path: &Path) -> std::path::PathBuf {
    fs::create_dir_all(path).unwrap();
    path.to_path_buf()
}

/// A mkfs that dies mid-way (here: writes junk into the first MiB, then hangs
/// until the formatter's timeout kills it) leaves the device marked: the next
/// attempt sees our interrupted format, never foreign data, and formats it.
#[test]
fn a_killed_mkfs_leaves_an_interrupted_format_that_is_redone() {
    in_private_mount_namespace(
        "a_killed_mkfs_leaves_an_interrupted_format_that_is_redone",
        |dir| {
            let lower = dir.join("lower");
            for sub in ["bin", "sbin", "dev", "proc"] {
                fs::create_dir_all(lower.join(sub)).unwrap();
            }
            let busybox = run(Command::new("sh").args(["-c", "command -v busybox"]));
            fs::copy(&busybox, lower.join("bin/busybox")).unwrap();
            std::os::unix::fs::symlink("busybox", lower.join("bin/sh")).unwrap();
            let script = "#!/bin/sh\n\
                for a; do case $a in /dev/*) dev=$a;; esac; done\n\
                /bin/busybox dd if=/dev/urandom of=$dev bs=4096 seek=1 count=64 conv=notrunc 2>/dev/null\n\
                /bin/busybox sync\n\
                exec /bin/busybox sleep 600\n";
            fs::write(lower.join("bin/fake-mkfs"), script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(
                lower.join("bin/fake-mkfs"),
                fs::Permissions::from_mode(0o755),
            )
            .unwrap();
            // An absolute symlink, as lowers have them: it must resolve inside the
            // lower (the host has no /bin/fake-mkfs).
            std::os::unix::fs::symlink("/bin/fake-mkfs", lower.join("sbin/mkfs.ext4")).unwrap();

            let img = image(dir, "killed.img", 0x00);
            let dev = Loop::attach(&img, false);
            let empty = empty_dir(&dir.join("empty"));
            let hidden: Vec<Mounted> = ["/usr/sbin", "/usr/bin"]
                .iter()
                .map(|d| Mounted::bind(&empty, Path::new(d)))
                .collect();
            let hanging = FormatRequest {
                lower_root: Some(&lower),
                timeout: Duration::from_secs(2),
                ..request(FsType::Ext4, "overlay")
            };
            let err = format!("{:#}", format_if_blank(&dev.dev, &hanging).unwrap_err());
            assert!(
                err.contains("did not finish in 2 s and was killed"),
                "{err}"
            );
            drop(hidden);
            // The junk is there, and so is the marker.
            let bytes = fs::read(&img).unwrap();
            assert!(bytes[4096..8192].iter().any(|&b| b != 0));
            match classify_device(&dev.dev).unwrap() {
                Classification::Interrupted(marker) => assert_eq!(marker.fstype, FsType::Ext4),
                other => panic!("after a killed mkfs: {other:?}"),
            }
            // The next boot's format (the host's real mkfs) completes it.
            let report = format_if_blank(&dev.dev, &request(FsType::Ext4, "overlay")).unwrap();
            assert!(report.was_interrupted);
            assert!(matches!(
                classify_device(&dev.dev).unwrap(),
                Classification::Usable(_)
            ));
        },
    );
}
