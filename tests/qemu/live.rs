//! Live media in QEMU (issue 19): the image is a file (`/live/root.sqsh`) on an ISO, a CD-ROM,
//! a FAT or an exFAT stick, booted with `root=LABEL=...`/`UUID=...` and `ovl.image=`, with the
//! initramfs built with `initramfs/build --live`. Persistence in a file (`ovl.upper=/PATH`),
//! the read-only ISO's tmpfs warning, and `ovl.toram` with the medium removed afterwards.
//!
//! Run: `cargo test --test qemu live::` (as root; builds the artifacts on first use). The host
//! needs no vfat/exfat/isofs driver: the FAT stick is filled with mtools, the exFAT one through
//! exfat-fuse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::*;

const IMAGE_HOST: &str = "/run/overlay-init/image-host";

/// `MOUNT <mountpoint> <fstype> <ro|rw> <source>` for the mounts these tests look at.
const SHOW_MOUNTS: &str = "while read dev mp fs opts rest; do case $mp in /|/rom|/overlay|/run/overlay-init/*) echo MOUNT $mp $fs ${opts%%,*} $dev;; esac; done < /proc/mounts";

/// overlay-init's initramfs with the `--live` module preset (CD, isofs, vfat, exfat), built
/// once per test process.
fn live_initramfs() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let a = artifacts();
        let out = work_dir().join("initramfs-live.cpio.gz");
        run(Command::new(repo_dir().join("initramfs/build"))
            .arg("--init")
            .arg(&a.init)
            .arg("--modules")
            .arg(&a.kernel.modules)
            .arg("--live")
            .arg("-o")
            .arg(&out));
        out
    })
}

/// The live initramfs plus the host's `mkfs.ext4` at `/sbin/mkfs.ext4` with the shared
/// libraries `ldd` lists (for `ovl.upper_create=`), built once per test process.
fn live_initramfs_with_mkfs() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let a = artifacts();
        let mkfs = std::fs::canonicalize("/sbin/mkfs.ext4").expect("mkfs.ext4 (e2fsprogs)");
        let mut files = vec![format!("{}:/sbin/mkfs.ext4", mkfs.display())];
        for line in run(Command::new("ldd").arg(&mkfs)).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                let source = std::fs::canonicalize(path).unwrap();
                files.push(format!("{}:{path}", source.display()));
            }
        }
        let out = work_dir().join("initramfs-live-mkfs.cpio.gz");
        let mut command = Command::new(repo_dir().join("initramfs/build"));
        command
            .arg("--init")
            .arg(&a.init)
            .arg("--modules")
            .arg(&a.kernel.modules)
            .arg("--live");
        for file in &files {
            command.arg("--file").arg(file);
        }
        run(command.arg("-o").arg(&out));
        out
    })
}

/// A directory tree for a medium: `/live/root.sqsh` (the demo root) plus `extra` files.
fn medium_tree(scratch: &Scratch, extra: &[(&Path, &str)]) -> PathBuf {
    let tree = scratch.join("medium");
    std::fs::create_dir_all(tree.join("live")).unwrap();
    std::fs::copy(&artifacts().root_sqsh, tree.join("live/root.sqsh")).unwrap();
    for (source, inside) in extra {
        let target = tree.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(source, target).unwrap();
    }
    tree
}

/// `xorriso -as mkisofs -V LABEL` (Rock Ridge, Joliet) of `tree`.
fn make_iso(tree: &Path, label: &str, out: &Path) {
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", label, "-o"])
        .arg(out)
        .arg(tree));
}

/// A FAT32 stick labelled `label` of `mib` MiB holding `tree`, made and filled without
/// mounting it (mkfs.vfat, mtools).
fn make_fat_stick(tree: &Path, label: &str, mib: u64, out: &Path) {
    run(Command::new("truncate")
        .arg(format!("--size={mib}M"))
        .arg(out));
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", label])
        .arg(out));
    for entry in std::fs::read_dir(tree).unwrap() {
        run(Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(out)
            .arg(entry.unwrap().path())
            .arg("::/"));
    }
}

/// The file `inside` of the FAT image `stick`, copied out with mtools.
fn fat_read(stick: &Path, inside: &str, out: &Path) {
    let _ = std::fs::remove_file(out);
    run(Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(stick)
        .arg(format!("::{inside}"))
        .arg(out));
}

/// A fresh ext4 image for a persistence file (label `persist`).
fn persistence_file(scratch: &Scratch, mib: u64) -> PathBuf {
    let file = scratch.join("persist.img");
    make_ext4(&file, mib, None, &["-L", "persist"]);
    file
}

fn live_boot(append: &str, disks: Vec<Disk>, cdrom: Option<PathBuf>, script: &str) -> BootResult {
    boot(&BootSpec {
        append: format!("{append} ovl.onfail=halt {}", test_init_args(script)),
        disks,
        cdrom,
        initrd: Initrd::Path(live_initramfs().clone()),
        ..Default::default()
    })
}

/// The checks every live boot shares: root is the overlay of the image file, loop-mounted from
/// the medium mounted read-only at the image host.
fn assert_live_root(result: &BootResult, host_fstype: &str, dev: &str) {
    assert_test_passed(result);
    assert_output(result, "MOUNT / overlay rw");
    assert_output(result, "MOUNT /rom squashfs ro /dev/loop");
    assert_output(result, "ROM-IS-ROOT");
    assert_output(result, "OVERLAY-WRITABLE");
    assert_marker(
        result,
        &format!("image host: {dev} ({host_fstype}) read-only"),
    );
}

const LIVE_CHECKS: &str = "test -x /rom/sbin/test-init && echo ROM-IS-ROOT; \
     echo new > /etc/new && echo OVERLAY-WRITABLE";

/// An ISO attached as a virtio disk, by its volume ID; a persistence file named on it gives
/// the read-only warning and a tmpfs upper.
#[test]
fn iso_on_a_virtio_disk_boots_by_label_and_a_persistence_file_on_it_is_a_tmpfs_warning() {
    let scratch = Scratch::new("live-iso-label");
    let persist = persistence_file(&scratch, 16);
    let tree = medium_tree(&scratch, &[(&persist, "/live/persist.img")]);
    let iso = scratch.join("live.iso");
    make_iso(&tree, "MYLIVE", &iso);

    let result = live_boot(
        "root=LABEL=MYLIVE ovl.image=/live/root.sqsh ovl.upper=/live/persist.img",
        vec![Disk::ro(&iso)],
        None,
        &format!("{SHOW_MOUNTS}; {LIVE_CHECKS}"),
    );
    assert_live_root(&result, "iso9660", "/dev/vda");
    assert_marker(&result, "LABEL=MYLIVE is /dev/vda");
    assert_output(&result, &format!("MOUNT {IMAGE_HOST} iso9660 ro /dev/vda"));
    assert_marker(
        &result,
        "persistence file not used, booting on a tmpfs upper",
    );
    assert_marker(
        &result,
        "/dev/vda holds iso9660, which is read-only: a persistence file on it cannot be written",
    );
    assert_output(&result, "MOUNT /overlay tmpfs rw");
    assert_no_marker(&result, "Other(");
}

/// The same kind of ISO as a real CD-ROM (QEMU `-cdrom`: ata_piix, sr_mod, /dev/sr0), by the
/// UUID blkid shows for it (from the volume creation date).
#[test]
fn iso_as_a_cdrom_boots_by_uuid() {
    let scratch = Scratch::new("live-cdrom");
    let tree = medium_tree(&scratch, &[]);
    let iso = scratch.join("live.iso");
    make_iso(&tree, "MYLIVE", &iso);
    let uuid = run(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID"])
        .arg(&iso));
    let uuid = uuid.trim();
    assert_eq!(uuid.len(), "2026-11-30-12-00-00-00".len(), "blkid: {uuid}");

    let result = live_boot(
        &format!("root=UUID={uuid} ovl.image=/live/root.sqsh"),
        Vec::new(),
        Some(iso),
        &format!("{SHOW_MOUNTS}; {LIVE_CHECKS}"),
    );
    assert_live_root(&result, "iso9660", "/dev/sr0");
    assert_marker(&result, &format!("UUID={uuid} is /dev/sr0"));
    assert_output(&result, &format!("MOUNT {IMAGE_HOST} iso9660 ro /dev/sr0"));
    assert_output(&result, "MOUNT /overlay tmpfs rw");
}

/// A FAT stick with `/live/root.sqsh` and `/live/persist.img`: boot 1 writes, boot 2 reads it
/// back (and the boot counter in the file says 2), boot 3 with `ovl.reset` finds it empty,
/// boot 4 with `ovl.failsafe` keeps the file's filesystem read-only; the stick is read-only
/// until the file is used.
#[test]
fn fat_stick_by_label_keeps_changes_in_a_persistence_file_and_resets_it() {
    let scratch = Scratch::new("live-fat");
    let persist = persistence_file(&scratch, 24);
    let tree = medium_tree(&scratch, &[(&persist, "/live/persist.img")]);
    let stick = scratch.join("stick.img");
    make_fat_stick(&tree, "LIVEUSB", 64, &stick);
    let append = "root=LABEL=LIVEUSB ovl.image=/live/root.sqsh ovl.upper=/live/persist.img";

    let first = live_boot(
        append,
        vec![Disk::rw(&stick)],
        None,
        &format!("{SHOW_MOUNTS}; {LIVE_CHECKS}; echo kept > /etc/live-note"),
    );
    assert_live_root(&first, "vfat", "/dev/vda");
    assert_marker(
        &first,
        "image host: /dev/vda (vfat) read-write for the persistence file",
    );
    assert_output(&first, &format!("MOUNT {IMAGE_HOST} vfat rw /dev/vda"));
    assert_output(&first, "MOUNT /overlay ext4 rw /dev/loop");
    assert_no_marker(&first, "persistence file not used");
    let copy = scratch.join("persist-after-1.img");
    fat_read(&stick, "/live/persist.img", &copy);
    assert_eq!(
        ext4_read_file(&copy, "/upper/etc/live-note").as_deref(),
        Some(&b"kept\n"[..])
    );

    let second = live_boot(
        append,
        vec![Disk::rw(&stick)],
        None,
        "echo NOTE=$(cat /etc/live-note)",
    );
    assert_test_passed(&second);
    assert_output(&second, "NOTE=kept");
    // The boot counter lives in the file too.
    assert_marker(&second, "boot attempt 2 since the last");

    let third = live_boot(
        &format!("{append} ovl.reset"),
        vec![Disk::rw(&stick)],
        None,
        "test -e /etc/live-note && echo NOTE-STILL-THERE; echo DONE",
    );
    assert_test_passed(&third);
    assert_output(&third, "DONE");
    assert_no_output(&third, "NOTE-STILL-THERE");

    // Failsafe: the file's filesystem is mounted read-only, changes go to RAM. (The file is
    // attached read-write, as a partition is writable: the ext4 in it was left by a power-off
    // with a journal to replay, which a read-only loop device would refuse.)
    let fourth = live_boot(
        &format!("{append} ovl.failsafe"),
        vec![Disk::rw(&stick)],
        None,
        &format!("{SHOW_MOUNTS}; echo lost > /etc/failsafe-note"),
    );
    assert_test_passed(&fourth);
    assert_marker(&fourth, "FAILSAFE boot");
    assert_output(&fourth, "MOUNT /overlay ext4 ro /dev/loop");
    assert_output(&fourth, "MOUNT /run/overlay-init/failsafe-upper tmpfs rw");
    let copy = scratch.join("persist-after-4.img");
    fat_read(&stick, "/live/persist.img", &copy);
    assert_eq!(ext4_read_file(&copy, "/upper/etc/failsafe-note"), None);
    assert_eq!(ext4_read_file(&copy, "/upper/etc/live-note"), None);
}

/// `ovl.toram`: the image is copied into RAM, the medium unmounted; the disk is then removed
/// through the QEMU monitor (`drive_del`) and a file of the root that was never read before
/// still reads back whole.
#[test]
fn toram_copies_the_image_to_ram_and_the_medium_can_be_removed() {
    let scratch = Scratch::new("live-toram");
    let a = artifacts();
    let root = scratch.join("root");
    copy_tree(&a.root_dir, &root);
    std::fs::create_dir_all(root.join("data")).unwrap();
    run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", root.join("data/blob").display()))
        .args(["bs=64k", "count=32", "status=none"]));
    let expected = run(Command::new("md5sum").arg(root.join("data/blob")));
    let expected = expected.split_whitespace().next().unwrap().to_string();
    let tree = scratch.join("medium");
    std::fs::create_dir_all(tree.join("live")).unwrap();
    make_squashfs(&root, &tree.join("live/root.sqsh"));
    let stick = scratch.join("stick.img");
    make_fat_stick(&tree, "LIVEUSB", 64, &stick);
    let monitor = scratch.join("monitor.sock");
    // Printed as `echo TORAM-READY-$((6*7))`: the command line (which the kernel logs) must not
    // hold the trigger's text.
    let ready = "TORAM-READY-42";
    let after_ready = |action: Action| Trigger {
        after: ready.into(),
        action,
    };

    let result = boot(&BootSpec {
        append: format!(
            "root=LABEL=LIVEUSB ovl.image=/live/root.sqsh ovl.toram ovl.onfail=halt {}",
            test_init_args(&format!(
                "{SHOW_MOUNTS}; echo TORAM-READY-$((6*7)); read answer; \
                 echo BLOB=$(md5sum /data/blob)"
            ))
        ),
        disks: vec![Disk::ro(&stick)],
        initrd: Initrd::Path(live_initramfs().clone()),
        monitor: Some(monitor),
        triggers: vec![
            after_ready(Action::Monitor("drive_del disk0".into())),
            after_ready(Action::Console(b"go\n".to_vec())),
        ],
        ..Default::default()
    });
    assert_eq!(result.monitor_replies.len(), 1, "{result:?}");
    assert_test_passed(&result);
    assert_marker(&result, "toram: ");
    assert_marker(
        &result,
        "ovl.toram: the medium is unmounted and may be removed",
    );
    assert_output(&result, "MOUNT /run/overlay-init/toram tmpfs rw toram");
    assert_no_output(&result, &format!("MOUNT {IMAGE_HOST} "));
    assert_output(&result, &format!("BLOB={expected}"));
}

/// An exFAT stick (made by mkfs.exfat, filled through exfat-fuse), by its label.
#[test]
fn exfat_stick_boots_by_label() {
    let scratch = Scratch::new("live-exfat");
    let tree = medium_tree(&scratch, &[]);
    let stick = scratch.join("stick.img");
    run(Command::new("truncate").arg("--size=64M").arg(&stick));
    run(Command::new("mkfs.exfat")
        .args(["-L", "LIVEEXFAT"])
        .arg(&stick));
    let mnt = scratch.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // exfat-fuse wants a block device: a loop device, detached even when a step fails.
    struct LoopGuard(String);
    impl Drop for LoopGuard {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let dev = LoopGuard(
        run(Command::new("losetup").args(["-f", "--show"]).arg(&stick))
            .trim()
            .to_string(),
    );
    run(Command::new("mount.exfat-fuse").arg(&dev.0).arg(&mnt));
    let copied = Command::new("cp")
        .arg("-r")
        .arg(tree.join("live"))
        .arg(&mnt)
        .status();
    let unmounted = Command::new("umount").arg(&mnt).status();
    drop(dev);
    assert!(copied.unwrap().success(), "cp to the exFAT stick failed");
    assert!(unmounted.unwrap().success(), "umount {}", mnt.display());

    let result = live_boot(
        "root=LABEL=LIVEEXFAT ovl.image=/live/root.sqsh",
        vec![Disk::ro(&stick)],
        None,
        &format!("{SHOW_MOUNTS}; {LIVE_CHECKS}"),
    );
    assert_live_root(&result, "exfat", "/dev/vda");
    assert_marker(&result, "LABEL=LIVEEXFAT is /dev/vda");
    assert_output(&result, &format!("MOUNT {IMAGE_HOST} exfat ro /dev/vda"));
}

/// `ovl.upper_create=SIZE`: the persistence file is missing from the FAT stick; the first boot
/// creates it, formats it with the initramfs's mkfs.ext4 and keeps a change in it.
#[test]
fn upper_create_makes_the_missing_persistence_file_on_a_fat_stick() {
    let scratch = Scratch::new("live-create");
    let tree = medium_tree(&scratch, &[]);
    let stick = scratch.join("stick.img");
    make_fat_stick(&tree, "LIVEUSB", 64, &stick);

    let result = boot(&BootSpec {
        append: format!(
            "root=LABEL=LIVEUSB ovl.image=/live/root.sqsh ovl.upper=/live/persist.img \
             ovl.upper_create=24M ovl.onfail=halt {}",
            test_init_args(&format!("{SHOW_MOUNTS}; echo created > /etc/created-note"))
        ),
        disks: vec![Disk::rw(&stick)],
        initrd: Initrd::Path(live_initramfs_with_mkfs().clone()),
        ..Default::default()
    });
    assert_test_passed(&result);
    assert_marker(&result, "ovl.upper_create: creating ");
    assert_output(&result, "MOUNT /overlay ext4 rw /dev/loop");
    assert_no_marker(&result, "persistence file not used");
    let copy = scratch.join("persist-created.img");
    fat_read(&stick, "/live/persist.img", &copy);
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 24 << 20);
    assert_eq!(
        ext4_read_file(&copy, "/upper/etc/created-note").as_deref(),
        Some(&b"created\n"[..])
    );
}
