//! Loop-device tests against the real kernel: attach image files made at test
//! time with mksquashfs / mkfs.ext4, mount them, detach, and check that no loop
//! device is left behind — also when a step fails midway.
//!
//! Needs root and the loop, squashfs and ext4 drivers. Each test re-runs
//! itself (`--exact NAME`) under `unshare --mount --propagation private`, so
//! its mounts live in a private mount namespace that dies with the child and
//! never reach the host. Loop devices are global: guards detach them, and both
//! the child and the parent check that none bound to the test's files remains.
//!
//! Run: `cargo test --test netns loopdev::`

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{
    assert_no_loop_device_under, in_private_mount_namespace, loop_devices_under, make_squashfs,
    Ext4, Mounted,
};
use overlay_init::fstype::FsType;
use overlay_init::sys::loopdev::{self, AttachOptions, LoopDevice};

/// A tree with one known file, the content every image carries.
fn make_tree(dir: &Path, marker: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{marker}"));
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/marker"), format!("{marker}\n")).unwrap();
    tree
}

fn squashfs_image(dir: &Path, marker: &str) -> PathBuf {
    let tree = make_tree(dir, marker);
    let image = dir.join(format!("{marker}.sqsh"));
    make_squashfs(&tree, &image);
    image
}

fn ext4_image(dir: &Path, marker: &str, tree: &Path) -> PathBuf {
    let image = dir.join(format!("{marker}.ext4"));
    Ext4::mib(16).label(marker).contents(tree).write_to(&image);
    image
}

fn sysfs_read_only(device: &LoopDevice) -> bool {
    let ro = fs::read_to_string(format!("/sys/block/loop{}/ro", device.number())).unwrap();
    ro.trim() == "1"
}

/// Attach, check read-only, detect, mount, read the marker, unmount, detach.
fn attach_mount_read_detach(image: &Path, fstype: FsType, marker: &str, mountpoint: &Path) {
    let device = loopdev::attach_image(image).expect("attaching image");
    assert_eq!(
        loopdev::backing_file(device.path()).as_deref(),
        Some(image),
        "sysfs names the image as the backing file of {}",
        device.path().display()
    );
    assert!(device.is_read_only().unwrap(), "BLKROGET says read-only");
    assert!(
        sysfs_read_only(&device),
        "/sys/block/loopN/ro says read-only"
    );

    assert_eq!(
        overlay_init::lower::detect_fstype(device.path()).expect("a supported filesystem"),
        fstype
    );
    let mounted =
        Mounted::read_only(device.path(), mountpoint, fstype.kernel_name()).expect("mounting");
    assert_eq!(
        fs::read_to_string(mountpoint.join("etc/marker")).unwrap(),
        format!("{marker}\n")
    );
    assert!(
        fs::write(mountpoint.join("etc/new"), "x").is_err(),
        "the mount is read-only"
    );
    mounted.unmount();
    device.detach().expect("detaching");
    let left: Vec<_> = loopdev::attached_loop_devices()
        .unwrap()
        .into_iter()
        .filter(|(_, file)| file == image)
        .collect();
    assert!(
        left.is_empty(),
        "{} still attached: {left:?}",
        image.display()
    );
}

#[test]
fn squashfs_image_attaches_read_only_and_detaches() {
    in_private_mount_namespace("squashfs_image_attaches_read_only_and_detaches", |dir| {
        let image = squashfs_image(dir, "squash");
        attach_mount_read_detach(&image, FsType::Squashfs, "squash", &dir.join("mnt"));
    });
}

#[test]
fn ext4_image_attaches_read_only_and_detaches() {
    in_private_mount_namespace("ext4_image_attaches_read_only_and_detaches", |dir| {
        let tree = make_tree(dir, "extfour");
        let image = ext4_image(dir, "extfour", &tree);
        attach_mount_read_detach(&image, FsType::Ext4, "extfour", &dir.join("mnt"));
    });
}

#[test]
fn failed_mount_leaves_no_loop_device() {
    in_private_mount_namespace("failed_mount_leaves_no_loop_device", |dir| {
        // Not a filesystem: one MiB of a repeating pattern.
        let junk = dir.join("junk.img");
        fs::write(&junk, b"not a filesystem ".repeat(64 * 1024)).unwrap();
        let result = (|| -> anyhow::Result<()> {
            let device = loopdev::attach_image(&junk)?;
            assert_eq!(loop_devices_under(dir).len(), 1, "attached while in use");
            Mounted::read_only(device.path(), &dir.join("mnt"), "squashfs")?;
            device.keep();
            Ok(())
        })();
        let err = result.expect_err("mounting junk as squashfs must fail");
        assert!(err.to_string().contains("Invalid argument"), "{err:#}");
        assert_no_loop_device_under(dir);
    });
}

#[test]
fn bad_image_paths_are_reported_by_name() {
    in_private_mount_namespace("bad_image_paths_are_reported_by_name", |dir| {
        let missing = dir.join("missing.sqsh");
        let err = loopdev::attach_image(&missing).unwrap_err();
        assert!(format!("{err:#}").contains("missing.sqsh"), "{err:#}");

        let empty = dir.join("empty.sqsh");
        fs::write(&empty, b"").unwrap();
        let err = loopdev::attach_image(&empty).unwrap_err();
        assert!(
            format!("{err:#}").contains("empty.sqsh is empty"),
            "{err:#}"
        );

        let err = loopdev::attach_image(dir).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        assert_no_loop_device_under(dir);
    });
}

#[test]
fn kept_device_lives_until_its_mount_goes() {
    in_private_mount_namespace("kept_device_lives_until_its_mount_goes", |dir| {
        let image = squashfs_image(dir, "kept");
        let device = loopdev::attach_image(&image).unwrap();
        let device_path = device.path().to_owned();
        let mounted = Mounted::read_only(&device_path, &dir.join("mnt"), "squashfs").unwrap();
        device.keep();
        // Our handle is closed; the mount alone holds the device.
        assert_eq!(
            loopdev::backing_file(&device_path).as_deref(),
            Some(&*image)
        );
        assert_eq!(
            fs::read_to_string(dir.join("mnt/etc/marker")).unwrap(),
            "kept\n"
        );
        mounted.unmount();
        // Autoclear: the kernel detached it when the mount went.
        assert_eq!(loopdev::backing_file(&device_path), None);
    });
}

/// The `ovl.image=` case: the image sits on a filesystem mounted read-only
/// (itself a loop-mounted ext4 here), so it can only be opened read-only.
#[test]
fn image_on_read_only_filesystem_attaches() {
    in_private_mount_namespace("image_on_read_only_filesystem_attaches", |dir| {
        let squashfs = squashfs_image(dir, "inner");
        let outer_tree = dir.join("outer-tree");
        fs::create_dir_all(outer_tree.join("images")).unwrap();
        fs::rename(&squashfs, outer_tree.join("images/root.sqsh")).unwrap();
        let outer_image = ext4_image(dir, "outer", &outer_tree);

        let outer_device = loopdev::attach_image(&outer_image).unwrap();
        let outer_mount = dir.join("outer");
        let outer = Mounted::read_only(outer_device.path(), &outer_mount, "ext4").unwrap();
        let inner_image = outer_mount.join("images/root.sqsh");
        assert!(
            fs::OpenOptions::new()
                .write(true)
                .open(&inner_image)
                .is_err(),
            "the image's filesystem is read-only"
        );

        attach_mount_read_detach(&inner_image, FsType::Squashfs, "inner", &dir.join("mnt"));

        outer.unmount();
        outer_device.detach().unwrap();
        assert_no_loop_device_under(dir);
    });
}

#[test]
fn direct_io_request_attaches_and_can_be_declined() {
    in_private_mount_namespace("direct_io_request_attaches_and_can_be_declined", |dir| {
        let image = squashfs_image(dir, "dio");
        let buffered =
            LoopDevice::attach_read_only(&image, AttachOptions { direct_io: false }).unwrap();
        assert!(!buffered.direct_io(), "direct I/O was not asked for");
        // The backing file sits on ext4 here, which supports O_DIRECT.
        let direct =
            LoopDevice::attach_read_only(&image, AttachOptions { direct_io: true }).unwrap();
        assert!(direct.direct_io(), "direct I/O on an ext4-backed image");
        assert_ne!(buffered.number(), direct.number());
        assert_eq!(loop_devices_under(dir).len(), 2);
        drop(buffered);
        drop(direct);
        assert_no_loop_device_under(dir);
    });
}
