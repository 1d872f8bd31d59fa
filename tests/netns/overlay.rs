//! Assembling an overlay root against the real kernel, without booting: a
//! squashfs or ext4 lower and a tmpfs or ext4 upper on real loop devices (a
//! device upper through the boot's own `boot::upper` steps), the
//! overlay, and the moves of `/rom` and `/overlay` into the new root. Each test
//! runs in its own private mount namespace (see `support::namespace`).
//!
//! Run: `cargo test --test netns overlay::` (as root).

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{in_private_mount_namespace, make_squashfs, tree, Ext4, Loop};
use overlay_init::boot::upper::{mount_upper, prepare_upper_dirs, UpperKind};
use overlay_init::cmdline::Config;
use overlay_init::fstype::FsType;
use overlay_init::overlay::{self, Staging};
use overlay_init::sys::mount::is_mountpoint;

/// A lower tree with an init and a few files, as a squashfs image.
fn squashfs_lower(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let src = dir.join("lower-src");
    tree(&src, files);
    fs::create_dir_all(src.join("sbin")).unwrap();
    fs::copy("/bin/true", src.join("sbin/init")).unwrap();
    let image = dir.join(format!("lower-{}.sqsh", files.len()));
    make_squashfs(&src, &image);
    fs::remove_dir_all(&src).unwrap();
    image
}

fn mounted_fstype(path: &Path) -> String {
    let canon = fs::canonicalize(path).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(&*canon.to_string_lossy()))
        .filter_map(|l| l.split(" - ").nth(1)?.split(' ').next().map(str::to_string))
        .next()
        .unwrap_or_default()
}

#[test]
fn squashfs_lower_ext4_upper_moves_rom_and_overlay() {
    in_private_mount_namespace("squashfs_lower_ext4_upper_moves_rom_and_overlay", |dir| {
        let lower_img = squashfs_lower(dir, &[("etc/motd", "from the lower\n")]);
        let upper_img = dir.join("upper.ext4");
        Ext4::mib(16).label("upper").write_to(&upper_img);
        let lower = Loop::attach(&lower_img, true);
        let upper = Loop::attach(&upper_img, false);
        let staging = Staging::new(dir.join("staging"), dir.join("keep"));

        assert_eq!(
            overlay_init::lower::detect_fstype(&lower.dev).unwrap(),
            FsType::Squashfs
        );
        assert_eq!(
            overlay_init::lower::detect_fstype(&upper.dev).unwrap(),
            FsType::Ext4
        );
        overlay::mount_lower(&lower.dev, FsType::Squashfs, None, &staging.rom()).unwrap();
        // The boot's own "upper" step: read-only first, checked, then read-write.
        let config = Config::default();
        let mut kind = mount_upper(&config, &staging, Some(&upper.dev), None).unwrap();
        assert_eq!(kind, UpperKind::Persistent(upper.dev.clone()));
        let (u, w) = prepare_upper_dirs(&config, &staging, &mut kind).unwrap();
        overlay::mount_overlay(&[staging.rom()], &u, &w, &staging.root()).unwrap();

        let root = staging.root();
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).unwrap(),
            "from the lower\n"
        );
        fs::write(root.join("etc/new"), "written\n").unwrap();
        assert_eq!(fs::read_to_string(u.join("etc/new")).unwrap(), "written\n");

        overlay::move_layers_into_root(&staging).unwrap();
        assert_eq!(mounted_fstype(&root.join("rom")), "squashfs");
        assert_eq!(mounted_fstype(&root.join("overlay")), "ext4");
        assert!(!is_mountpoint(&staging.rom()));
        assert_eq!(
            fs::read_to_string(root.join("rom/etc/motd")).unwrap(),
            "from the lower\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("overlay/upper/etc/new")).unwrap(),
            "written\n"
        );
        assert!(!root.join("rom/etc/new").exists());

        overlay_init::sys::switch::check_init(&root, "/sbin/init").unwrap();
        let missing = overlay_init::sys::switch::check_init(&root, "/sbin/nope").unwrap_err();
        assert!(format!("{missing:#}").contains("/sbin/nope"), "{missing:#}");
    });
}

#[test]
fn ext4_lower_tmpfs_upper() {
    in_private_mount_namespace("ext4_lower_tmpfs_upper", |dir| {
        let src = dir.join("src");
        tree(&src, &[("hello", "ext4 lower\n")]);
        let lower_img = dir.join("lower.ext4");
        Ext4::mib(8)
            .label("rom")
            .contents(&src)
            .write_to(&lower_img);
        let lower = Loop::attach(&lower_img, true);
        let staging = Staging::new(dir.join("staging"), dir.join("keep"));
        let fstype = overlay_init::lower::detect_fstype(&lower.dev).unwrap();
        assert_eq!(fstype, FsType::Ext4);
        overlay::mount_lower(&lower.dev, fstype, Some("noload"), &staging.rom()).unwrap();
        overlay::mount_tmpfs_upper(
            &staging.upper_fs(),
            Some(overlay_init::cmdline::TmpfsSize::Bytes(8 << 20)),
        )
        .unwrap();
        let (u, w) = overlay::prepare_upper_dirs(&staging.upper_fs()).unwrap();
        overlay::mount_overlay(&[staging.rom()], &u, &w, &staging.root()).unwrap();
        fs::write(staging.root().join("hello"), "changed\n").unwrap();
        assert_eq!(
            fs::read_to_string(staging.rom().join("hello")).unwrap(),
            "ext4 lower\n"
        );
        assert_eq!(mounted_fstype(&staging.upper_fs()), "tmpfs");
        overlay::move_layers_into_root(&staging).unwrap();
        assert_eq!(mounted_fstype(&staging.root().join("rom")), "ext4");
    });
}

#[test]
fn two_lowers_main_lower_wins() {
    in_private_mount_namespace("two_lowers_main_lower_wins", |dir| {
        let main_img = squashfs_lower(dir, &[("both", "main\n"), ("only-main", "m\n")]);
        let extra_src = dir.join("extra");
        tree(&extra_src, &[("both", "extra\n"), ("only-extra", "e\n")]);
        let extra_img = dir.join("extra.sqsh");
        make_squashfs(&extra_src, &extra_img);
        let main = Loop::attach(&main_img, true);
        let extra = Loop::attach(&extra_img, true);
        let staging = Staging::new(dir.join("staging"), dir.join("keep"));
        overlay::mount_lower(&main.dev, FsType::Squashfs, None, &staging.rom()).unwrap();
        overlay::mount_lower(&extra.dev, FsType::Squashfs, None, &staging.extra_lower(0)).unwrap();
        overlay::mount_tmpfs_upper(&staging.upper_fs(), None).unwrap();
        let (u, w) = overlay::prepare_upper_dirs(&staging.upper_fs()).unwrap();
        overlay::mount_overlay(
            &[staging.rom(), staging.extra_lower(0)],
            &u,
            &w,
            &staging.root(),
        )
        .unwrap();
        let root = staging.root();
        assert_eq!(fs::read_to_string(root.join("both")).unwrap(), "main\n");
        assert_eq!(fs::read_to_string(root.join("only-main")).unwrap(), "m\n");
        assert_eq!(fs::read_to_string(root.join("only-extra")).unwrap(), "e\n");
    });
}

#[test]
fn read_only_upper_device_degrades_to_tmpfs() {
    in_private_mount_namespace("read_only_upper_device_degrades_to_tmpfs", |dir| {
        let upper_img = dir.join("upper.ext4");
        Ext4::mib(16).label("upper").write_to(&upper_img);
        let before = fs::read(&upper_img).unwrap();
        let upper = Loop::attach(&upper_img, true);
        let staging = Staging::new(dir.join("staging"), dir.join("keep"));
        // The boot's own "upper" step: the device will not mount read-write.
        let kind = mount_upper(&Config::default(), &staging, Some(&upper.dev), None).unwrap();
        let UpperKind::FallbackTmpfs { device, reason } = kind else {
            panic!("a read-only upper device is not used: {kind:?}");
        };
        assert_eq!(device, upper.dev);
        assert!(reason.contains(&*upper.dev.to_string_lossy()), "{reason}");
        assert_eq!(mounted_fstype(&staging.upper_fs()), "tmpfs");
        overlay_init::sys::mount::umount(&staging.upper_fs(), false).unwrap();
        drop(upper);
        assert!(
            fs::read(&upper_img).unwrap() == before,
            "the refused upper was modified"
        );
    });
}
