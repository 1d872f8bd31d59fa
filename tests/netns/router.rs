//! Router mode against the real kernel, without booting: a squashfs root is
//! loop-mounted and chrooted into (standing in for the root the kernel mounts
//! from flash), then the boot's own sequence runs in `RootMode::KernelRoot` —
//! API mounts, stage on a tmpfs over the read-only root's `/tmp`, overlay `/`
//! with a tmpfs upper and an extra lower (an image file on the root),
//! pivot_root — and the new root is checked from inside.
//! Each test runs in its own private mount namespace (see `support::namespace`),
//! so the pivot never touches the host.
//!
//! Run: `cargo test --test netns router::` (as root).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::{in_private_mount_namespace, make_squashfs, tree};
use overlay_init::boot::upper::UpperKind;
use overlay_init::boot::{self, RootMode};
use overlay_init::mounted_root::{self, BootMode};
use overlay_init::sys::loopdev;
use overlay_init::sys::mount::{is_mountpoint, mount_fs};
use overlay_init::timeline::Timeline;
use rustix::mount::MountFlags;

const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
const SQUASHFS_MAGIC: i64 = 0x7371_7368;
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn fs_magic(path: &str) -> i64 {
    rustix::fs::statfs(path)
        .unwrap_or_else(|e| panic!("statfs {path}: {e}"))
        .f_type as i64
}

/// A squashfs image of a tree with the given files (those in `sbin/`
/// executable) and empty directories.
fn squashfs(dir: &Path, name: &str, files: &[(&str, &str)], dirs: &[&str]) -> PathBuf {
    squashfs_with(dir, name, files, dirs, &[])
}

/// [`squashfs`], with `copies` (host file, path in the image) copied in.
fn squashfs_with(
    dir: &Path,
    name: &str,
    files: &[(&str, &str)],
    dirs: &[&str],
    copies: &[(&Path, &str)],
) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    tree(&src, files);
    for (path, _) in files.iter().filter(|(p, _)| p.starts_with("sbin/")) {
        fs::set_permissions(src.join(path), fs::Permissions::from_mode(0o755)).unwrap();
    }
    for d in dirs {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for (from, to) in copies {
        let to = src.join(to);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(from, to).unwrap();
    }
    let image = dir.join(format!("{name}.sqsh"));
    make_squashfs(&src, &image);
    image
}

/// Loop-mount a squashfs read-only; the device lives as long as the mount.
fn mount_squashfs(image: &Path, target: &Path) {
    let device = loopdev::attach_image(image).unwrap();
    mount_fs(
        &device.path().to_string_lossy(),
        target,
        "squashfs",
        MountFlags::RDONLY,
        "",
    )
    .unwrap();
    device.keep();
}

/// Build a router root, chroot into it as the kernel would have mounted it,
/// run the boot's own sequence (`boot::sequence` in `RootMode::KernelRoot`)
/// up to and including the pivot, and check the result. `with_run`: the
/// image has a `/run` (a tmpfs is mounted there), as opposed to OpenWrt's
/// layout.
fn router_boot(dir: &Path, with_run: bool) {
    let mut dirs = vec!["proc", "sys", "dev", "tmp", "mnt"];
    if with_run {
        dirs.push("run");
    }
    // The extra lower is an image file on the root (`ovl.lower=/images/...`).
    let extra_image = squashfs(
        dir,
        "extra",
        &[("usr/extra", "from the extra lower\n")],
        &[],
    );
    let root_image = squashfs_with(
        dir,
        "root",
        &[
            ("etc/marker", "from the rom\n"),
            ("sbin/init", "#!/bin/sh\n"),
        ],
        &dirs,
        &[(&extra_image, "images/extra.sqsh")],
    );

    let rootimg = dir.join("rootimg");
    mount_squashfs(&root_image, &rootimg);
    assert!(
        fs::write(rootimg.join("tmp/probe"), b"").is_err(),
        "the stand-in root is read-only"
    );
    rustix::process::chroot(&rootimg).unwrap();
    rustix::process::chdir("/").unwrap();

    let mode = RootMode::KernelRoot;
    mode.mount_api_filesystems().unwrap();
    assert_eq!(is_mountpoint(Path::new("/run")), with_run);
    let BootMode::Router(root) = mounted_root::detect_boot_mode().unwrap() else {
        panic!("a squashfs / is router mode");
    };
    assert_eq!(root.fstype, "squashfs");
    assert!(root.read_only);

    let parsed =
        overlay_init::cmdline::parse("init=/sbin/overlay-init ovl.lower=/images/extra.sqsh");
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let mut timeline = Timeline::default();
    let booted = boot::sequence(mode, &parsed.config, "/sbin/overlay-init", &mut timeline)
        .unwrap_or_else(|e| panic!("step {}: {:#}", e.step, e.error));
    assert_eq!(booted.init, "/sbin/init");
    assert_eq!(booted.upper, UpperKind::Tmpfs);
    assert_eq!(booted.staging.dir, Path::new("/tmp"));
    let expected_keep = if with_run {
        "/run/overlay-init"
    } else {
        "/tmp/keep"
    };
    assert_eq!(booted.staging.keep_dir, Path::new(expected_keep));
    // Both modes time the same steps; only the initramfs is freed.
    let steps: Vec<&str> = timeline.steps.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        steps,
        [
            "failsafe window",
            "modules",
            "device wait",
            "staging",
            "lower",
            "extra lowers",
            "upper file",
            "upper",
            "record boot",
            "upper dirs",
            "overlay",
            "move layers",
            "check init",
            "boot state",
            "move api mounts",
            "switch root",
        ]
    );

    // `/` is the overlay: the rom's files, the extra lower's, and writable.
    assert_eq!(fs_magic("/"), OVERLAYFS_MAGIC);
    assert_eq!(fs::read_to_string("/etc/marker").unwrap(), "from the rom\n");
    assert_eq!(
        fs::read_to_string("/usr/extra").unwrap(),
        "from the extra lower\n"
    );
    fs::write("/etc/written", "new\n").unwrap();
    assert_eq!(
        fs::read_to_string("/overlay/upper/etc/written").unwrap(),
        "new\n"
    );
    // `/rom` is the old root, untouched, and the staging tmpfs is gone from it.
    assert_eq!(fs_magic("/rom"), SQUASHFS_MAGIC);
    assert_eq!(fs_magic("/rom/tmp"), SQUASHFS_MAGIC);
    assert!(!Path::new("/rom/etc/written").exists());
    assert_eq!(fs_magic("/overlay"), TMPFS_MAGIC);
    // The API filesystems moved along; none is left under /rom.
    for api in ["/proc", "/sys", "/dev"] {
        assert!(is_mountpoint(Path::new(api)), "{api} is mounted");
    }
    assert!(fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .all(|l| !l.contains(" /rom/")));
    let mode = mounted_root::boot_mode_from_mountinfo(
        &fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .unwrap();
    assert!(matches!(mode, BootMode::Router(ref r) if r.fstype == "overlay"));
    if with_run {
        assert_eq!(
            fs::read_to_string("/run/overlay-init/lower0/usr/extra").unwrap(),
            "from the extra lower\n",
            "the extra lower stays visible under /run"
        );
    }
}

#[test]
fn router_pivot_openwrt_layout_without_run() {
    in_private_mount_namespace("router_pivot_openwrt_layout_without_run", |dir| {
        router_boot(dir, false);
    });
}

#[test]
fn router_pivot_with_run_keeps_extra_lowers_visible() {
    in_private_mount_namespace("router_pivot_with_run_keeps_extra_lowers_visible", |dir| {
        router_boot(dir, true);
    });
}
