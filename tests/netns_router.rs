//! Router mode against the real kernel, without booting: a squashfs root is
//! loop-mounted and chrooted into (standing in for the root the kernel mounts
//! from flash), then the router sequence runs — detect the mode, stage on a
//! tmpfs over the read-only root's `/tmp`, overlay `/` with a tmpfs upper and
//! an extra lower, pivot_root — and the new root is checked from inside.
//! Each test runs in its own private mount namespace (see `netns_support`),
//! so the pivot never touches the host.
//!
//! Run: `cargo test --test netns_router` (as root).

mod netns_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use netns_support::{in_private_mount_namespace, mksquashfs, tree};
use overlay_init::overlay;
use overlay_init::router::{self, BootMode};
use overlay_init::sys::loopdev;
use overlay_init::sys::mount::{is_mountpoint, mount_fs};
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
    let src = dir.join(format!("{name}-src"));
    tree(&src, files);
    for (path, _) in files.iter().filter(|(p, _)| p.starts_with("sbin/")) {
        fs::set_permissions(src.join(path), fs::Permissions::from_mode(0o755)).unwrap();
    }
    for d in dirs {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    let image = dir.join(format!("{name}.sqsh"));
    mksquashfs(&src, &image);
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
/// run the router sequence, and check the result. `with_run`: the image has a
/// `/run` (a tmpfs is mounted there), as opposed to OpenWrt's layout.
fn router_boot(dir: &Path, with_run: bool) {
    let mut dirs = vec!["proc", "sys", "dev", "tmp", "mnt"];
    if with_run {
        dirs.push("run");
    }
    let root_image = squashfs(
        dir,
        "root",
        &[
            ("etc/marker", "from the rom\n"),
            ("sbin/init", "#!/bin/sh\n"),
        ],
        &dirs,
    );
    let extra_image = squashfs(
        dir,
        "extra",
        &[("usr/extra", "from the extra lower\n")],
        &[],
    );

    let rootimg = dir.join("rootimg");
    mount_squashfs(&root_image, &rootimg);
    assert!(
        fs::write(rootimg.join("tmp/probe"), b"").is_err(),
        "the stand-in root is read-only"
    );
    // Opened now: the extra lower's image is outside the chroot.
    let extra_fd = fs::File::open(&extra_image).unwrap();
    rustix::process::chroot(&rootimg).unwrap();
    rustix::process::chdir("/").unwrap();

    // What the boot path's API mounts do.
    mount_fs("proc", Path::new("/proc"), "proc", MountFlags::empty(), "").unwrap();
    mount_fs("sysfs", Path::new("/sys"), "sysfs", MountFlags::empty(), "").unwrap();
    mount_fs(
        "devtmpfs",
        Path::new("/dev"),
        "devtmpfs",
        MountFlags::empty(),
        "",
    )
    .unwrap();
    if with_run {
        mount_fs("run", Path::new("/run"), "tmpfs", MountFlags::empty(), "").unwrap();
    }

    let BootMode::Router(root) = router::detect_boot_mode().unwrap() else {
        panic!("a squashfs / is router mode");
    };
    assert_eq!(root.fstype, "squashfs");
    assert!(root.read_only);

    let staging = router::prepare_staging().unwrap();
    assert_eq!(staging.dir, Path::new("/tmp"));
    let expected_keep = if with_run {
        "/run/overlay-init"
    } else {
        "/tmp/keep"
    };
    assert_eq!(staging.keep_dir, Path::new(expected_keep));

    // An extra lower, through its fd: its path is outside the chroot.
    let extra_path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&extra_fd)
    );
    let extra_target = staging.extra_lower(0);
    mount_squashfs(Path::new(&extra_path), &extra_target);

    let upper_fs = staging.upper_fs();
    overlay::mount_tmpfs_upper(&upper_fs, None).unwrap();
    let (upper, work) = overlay::prepare_upper_dirs(&upper_fs).unwrap();
    let lowers = router::lowers(&[extra_target]);
    overlay::mount_overlay(&lowers, &upper, &work, &staging.root()).unwrap();
    router::move_upper_into_root(&staging).unwrap();
    let config = overlay_init::cmdline::parse("init=/sbin/overlay-init").config;
    let init = router::real_init(&config, "/sbin/overlay-init").unwrap();
    overlay_init::sys::switch::check_init(&staging.root(), &init).unwrap();

    router::pivot_into_overlay(&staging, &["/run", "/dev", "/sys", "/proc"]).unwrap();

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
    let mode =
        router::boot_mode_from_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap())
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
