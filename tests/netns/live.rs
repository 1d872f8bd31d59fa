//! Live media against the real kernel: an ISO made by xorriso, FAT12/FAT32
//! images made by mkfs.vfat and an exFAT image made by mkfs.exfat, attached as
//! loop devices, are found by the device walk by `LABEL=` and `UUID=` (as blkid
//! names them), and each is accepted as the host of an image file, with the
//! read-only mount options `live::image_host` gives.
//!
//! Mounting these hosts and reading `/live/root.sqsh` from them needs the
//! kernel's isofs, vfat and exfat drivers: this machine's kernel has none (see
//! /proc/filesystems), so that half is checked in QEMU, with Debian's kernel
//! and the `--live` initramfs, not here.
//!
//! Needs root, the loop driver, xorriso, mkfs.vfat and mkfs.exfat. Nothing is
//! mounted; every loop device is detached by a guard, also when an assertion
//! fails. Labels, serials and ISO dates are unique per run: block devices are
//! global and other tests' or the host's must never match.
//!
//! Run: `cargo test --test netns live::`

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::support::{make_squashfs, run, tree, unique_number, Loop, Scratch};
use overlay_init::devspec::DeviceSpec;
use overlay_init::live::image_host;
use overlay_init::sys::blockdev::DeviceWaiter;

/// `unique_number` as `len` upper-case hex digits.
fn unique_hex(len: usize) -> String {
    let hex = format!(
        "{:016X}",
        unique_number().wrapping_mul(0x9E37_79B9_7F4A_7C15)
    );
    hex[..len].to_string()
}

/// An ISO 9660 date (`YYYYMMDDhhmmsscc`) unique to this run, so that the
/// date-derived UUID names no other ISO on the machine.
fn unique_iso_date() -> String {
    let n = unique_number().wrapping_mul(0x2545_F491_4F6C_DD1D);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{:02}",
        1990 + n % 60,
        1 + (n >> 8) % 12,
        1 + (n >> 12) % 28,
        (n >> 20) % 24,
        (n >> 28) % 60,
        (n >> 36) % 60,
        (n >> 44) % 100
    )
}

/// `YYYY-MM-DD-HH-MM-SS-CC`, as blkid prints an ISO's UUID.
fn iso_uuid(date: &str) -> String {
    let d = date.as_bytes();
    let part = |r: std::ops::Range<usize>| std::str::from_utf8(&d[r]).unwrap().to_string();
    [
        part(0..4),
        part(4..6),
        part(6..8),
        part(8..10),
        part(10..12),
        part(12..14),
        part(14..16),
    ]
    .join("-")
}

fn blank_file(path: &Path, mib: u64) {
    fs::File::create(path)
        .and_then(|f| f.set_len(mib << 20))
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
}

fn spec(s: &str) -> DeviceSpec {
    DeviceSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// What blkid says about `dev`: (TYPE, LABEL, UUID).
fn blkid(dev: &Path) -> (String, String, String) {
    let value = |tag: &str| {
        run(Command::new("blkid")
            .args(["-p", "-s", tag, "-o", "value"])
            .arg(dev))
    };
    (value("TYPE"), value("LABEL"), value("UUID"))
}

#[test]
fn live_media_are_found_by_label_and_uuid_and_accepted_as_image_hosts() {
    let scratch = Scratch::new("live-hosts");
    let dir = scratch.path();

    // The image every medium carries.
    let content = dir.join("content");
    tree(&content, &[("etc/marker", "live\n")]);
    let live = dir.join("iso-tree");
    fs::create_dir_all(live.join("live")).unwrap();
    make_squashfs(&content, &live.join("live/root.sqsh"));

    // An ISO with Rock Ridge and Joliet, as live systems ship.
    let iso_label = format!("LIVE{}", unique_hex(8));
    let iso_date = unique_iso_date();
    let iso = dir.join("live.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", &iso_label])
        .arg(format!("--modification-date={iso_date}"))
        .arg("-o")
        .arg(&iso)
        .arg(&live));

    // FAT12 (small stick) and FAT32 (its root directory lies past the first
    // 68 KiB the walk reads: the label comes from a second read).
    let fat12_label = format!("F{}", unique_hex(10));
    let fat12_serial = unique_hex(8);
    let fat12 = dir.join("fat12.img");
    blank_file(&fat12, 8);
    run(Command::new("mkfs.vfat")
        .args(["-F", "12", "-n", &fat12_label, "-i", &fat12_serial])
        .arg(&fat12));
    let fat32_label = format!("G{}", unique_hex(10));
    let fat32_serial = unique_hex(8);
    let fat32 = dir.join("fat32.img");
    blank_file(&fat32, 64);
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", &fat32_label, "-i", &fat32_serial])
        .arg(&fat32));

    let exfat_label = format!("X{}", unique_hex(10));
    let exfat = dir.join("exfat.img");
    blank_file(&exfat, 8);
    run(Command::new("mkfs.exfat")
        .args(["-L", &exfat_label])
        .arg(&exfat));

    let iso_loop = Loop::attach(&iso, true);
    let fat12_loop = Loop::attach(&fat12, true);
    let fat32_loop = Loop::attach(&fat32, true);
    let exfat_loop = Loop::attach(&exfat, true);

    // The serials as blkid prints them (XXXX-XXXX); the exFAT one is random.
    let serial = |s: &str| format!("{}-{}", &s[..4], &s[4..]);
    let (exfat_type, exfat_blkid_label, exfat_uuid) = blkid(&exfat_loop.dev);
    assert_eq!(
        (exfat_type.as_str(), exfat_blkid_label.as_str()),
        ("exfat", exfat_label.as_str())
    );
    // blkid agrees with what the tools were told.
    assert_eq!(
        blkid(&iso_loop.dev),
        ("iso9660".into(), iso_label.clone(), iso_uuid(&iso_date))
    );
    assert_eq!(
        blkid(&fat32_loop.dev),
        ("vfat".into(), fat32_label.clone(), serial(&fat32_serial))
    );

    let specs = [
        spec(&format!("LABEL={iso_label}")),
        spec(&format!("UUID={}", iso_uuid(&iso_date))),
        spec(&format!("LABEL={fat12_label}")),
        spec(&format!("UUID={}", serial(&fat12_serial))),
        // UUIDs compare without regard to case.
        spec(&format!("UUID={}", serial(&fat32_serial).to_lowercase())),
        spec(&format!("LABEL={fat32_label}")),
        spec(&format!("LABEL={exfat_label}")),
        spec(&format!("UUID={exfat_uuid}")),
    ];
    let mut waiter = DeviceWaiter::new().expect("open uevent socket and walk /sys/class/block");
    let refs: Vec<&DeviceSpec> = specs.iter().collect();
    let found = waiter
        .wait_for(&refs, Some(Instant::now()), |_| {})
        .unwrap_or_else(|e| panic!("{e:#}"));

    let expected = [
        (&iso_loop, "iso9660"),
        (&iso_loop, "iso9660"),
        (&fat12_loop, "vfat"),
        (&fat12_loop, "vfat"),
        (&fat32_loop, "vfat"),
        (&fat32_loop, "vfat"),
        (&exfat_loop, "exfat"),
        (&exfat_loop, "exfat"),
    ];
    assert_eq!(found.len(), expected.len());
    for ((resolved, spec), (dev, fstype)) in found.iter().zip(&specs).zip(expected) {
        assert_eq!(&resolved.spec, spec);
        assert_eq!(resolved.dev_path, dev.dev, "{spec}");
        let fs = resolved.info.filesystem.as_ref().expect("a filesystem");
        assert_eq!(fs.kind.to_string(), fstype, "{spec}");
        // The listing line names the type, as blkid does.
        let line = resolved.info.to_string();
        assert!(line.contains(&format!("): {fstype} LABEL=")), "{line}");
        // Each may hold the image file, mounted read-only.
        let host = image_host(dev.dev_str(), &fs.kind).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.fstype, fstype);
    }
    assert!(
        !image_host(
            iso_loop.dev_str(),
            &found[0].info.filesystem.as_ref().unwrap().kind
        )
        .unwrap()
        .writable
    );
}

/// The shell side: `hostmount::mount_image_host` probes, mounts with
/// `image_host`'s options, and the image file on the host loop-mounts. ext4
/// runs here; the ISO needs the kernel's isofs, which this machine's kernel
/// lacks: then the error must name the device's type and the mount that failed
/// (with isofs, the ISO must mount and its image read like the ext4 one).
#[test]
fn image_hosts_mount_read_only_and_their_image_file_loop_mounts() {
    use crate::support::{in_private_mount_namespace, Ext4};
    use overlay_init::hostmount::{mount_image_host, HostAccess};
    use overlay_init::sys::modules::kernel_has_filesystem;

    in_private_mount_namespace(
        "image_hosts_mount_read_only_and_their_image_file_loop_mounts",
        |dir| {
            let content = dir.join("content");
            tree(&content, &[("etc/marker", "from the image\n")]);
            let medium = dir.join("medium");
            fs::create_dir_all(medium.join("live")).unwrap();
            make_squashfs(&content, &medium.join("live/root.sqsh"));

            let ext4 = dir.join("host.ext4");
            Ext4::mib(16).contents(&medium).write_to(&ext4);
            let iso = dir.join("host.iso");
            run(Command::new("xorriso")
                .args([
                    "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "HOSTTEST", "-o",
                ])
                .arg(&iso)
                .arg(&medium));

            let check = |image: &Path, fstype: &str| {
                let dev = Loop::attach(image, true);
                let host_dir = dir.join(format!("host-{fstype}"));
                let mounted = mount_image_host(&dev.dev, &host_dir, HostAccess::ReadOnly);
                if fstype == "iso9660" && !kernel_has_filesystem("iso9660") {
                    let err = format!("{:#}", mounted.expect_err("no isofs in this kernel"));
                    assert!(
                        err.contains(&format!("image host {} (iso9660)", dev.dev_str()))
                            && err.contains("mount -t iso9660"),
                        "{err}"
                    );
                    return;
                }
                let host = mounted.unwrap_or_else(|e| panic!("{e:#}"));
                assert_eq!(host.fstype, fstype);
                assert!(overlay_init::sys::mount::is_read_only(&host_dir).unwrap());
                let rom = dir.join(format!("rom-{fstype}"));
                overlay_init::lower::mount_image(&host_dir, "/live/root.sqsh", None, None, &rom)
                    .unwrap_or_else(|e| panic!("{e:#}"));
                assert_eq!(
                    fs::read_to_string(rom.join("etc/marker")).unwrap(),
                    "from the image\n"
                );
            };
            check(&ext4, "ext4");
            check(&iso, "iso9660");

            // A persistence file needs a writable host: never an ISO.
            let dev = Loop::attach(&iso, true);
            let err = mount_image_host(&dev.dev, &dir.join("rw"), HostAccess::ReadWrite)
                .expect_err("an ISO is read-only");
            assert!(
                format!("{err:#}").contains("holds iso9660, which cannot be mounted read-write"),
                "{err:#}"
            );
        },
    );
}

/// A persistence file's host: an ext4 medium mounted read-only as an image host is remounted
/// read-write; `ovl.upper_create`'s file is made sparse, formatted (with the host's
/// mkfs.ext4) and attached read-write; a formatter that fails leaves no file behind.
#[test]
fn a_persistence_file_is_created_on_a_remounted_host_and_attached_read_write() {
    use crate::support::{in_private_mount_namespace, Ext4};
    use overlay_init::boot::live::create_upper_file;
    use overlay_init::hostmount::{mount_image_host, remount_read_write, HostAccess};
    use overlay_init::sys::loopdev::{AttachOptions, LoopDevice};
    use overlay_init::sys::mount::is_read_only;
    use std::os::unix::fs::MetadataExt;

    in_private_mount_namespace(
        "a_persistence_file_is_created_on_a_remounted_host_and_attached_read_write",
        |dir| {
            let medium = dir.join("medium");
            tree(&medium, &[("live/readme", "a stick\n")]);
            let image = dir.join("host.ext4");
            Ext4::mib(64).contents(&medium).write_to(&image);
            let dev = Loop::attach(&image, false);
            let host = dir.join("host");
            mount_image_host(&dev.dev, &host, HostAccess::ReadOnly)
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert!(is_read_only(&host).unwrap());
            remount_read_write(&dev.dev, &host).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(!is_read_only(&host).unwrap());

            let file = host.join("live/persist.img");
            let size = 32u64 << 20;
            create_upper_file(&file, size, Path::new("/sbin/mkfs.ext4"))
                .unwrap_or_else(|e| panic!("{e:#}"));
            let meta = fs::metadata(&file).unwrap();
            assert_eq!(meta.len(), size);
            assert!(
                meta.blocks() * 512 < size,
                "not sparse: {} blocks",
                meta.blocks()
            );
            let blkid = run(Command::new("blkid")
                .args(["-p", "-o", "value", "-s", "TYPE"])
                .arg(&file));
            assert_eq!(blkid.trim(), "ext4");
            let attached = LoopDevice::attach_read_write(&file, AttachOptions::default())
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert!(!attached.is_read_only().unwrap());
            attached.detach().unwrap();

            let bad = host.join("live/bad.img");
            let err = create_upper_file(&bad, size, Path::new("/bin/false"))
                .expect_err("/bin/false formats nothing");
            let err = format!("{err:#}");
            assert!(
                err.contains("/bin/false failed with exit status 1"),
                "{err}"
            );
            assert!(!bad.exists(), "the half-made file was left: {err}");
            let exists = create_upper_file(&file, size, Path::new("/sbin/mkfs.ext4"))
                .expect_err("an existing file is never overwritten");
            assert!(format!("{exists:#}").contains("create "), "{exists:#}");
        },
    );
}
