//! A root the kernel mounted (router mode): overlay-init is `init=` on a root the kernel
//! mounted itself
//! (OpenWrt style: `root=/dev/mtdblockN rootfstype=squashfs`), no initramfs.
//!
//! The root already mounted read-only *is* the lower — it is used as
//! `lowerdir=/`, never mounted a second time. A read-only root has no
//! writable directory to assemble the new root in, so a small tmpfs is
//! mounted on an existing directory of it (`/tmp`, as OpenWrt does, else
//! `/mnt`), and the overlay, the upper and extra lowers are mounted inside
//! that. Then `pivot_root` makes the overlay `/` with the old root at `/rom`,
//! the API filesystems move along, and the staging tmpfs — now at `/rom/tmp`
//! — is detached, so `/rom` shows the squashfs exactly as it is.
//!
//! The boot's one sequence (`crate::boot::sequence`) uses these in
//! `RootMode::KernelRoot`: [`prepare_staging`] (a [`Staging`] whose dir is the
//! tmpfs), lowers [`lowers`] (`/` first), [`move_upper_into_root`],
//! [`real_init`], [`move_api_mounts`] and [`pivot_into_new_root`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::mount::MountFlags;

use crate::cmdline::{Config, DEFAULT_INIT};
use crate::mountinfo::parse_mountinfo;
use crate::overlay::Staging;
use crate::sys;
use crate::sys::mount::{ensure_dir, is_mountpoint, make_rprivate, mount_fs, move_mount, umount};

/// Directories of the read-only root that can hold the staging tmpfs, in
/// order of preference. Both exist in OpenWrt's and in FHS root images.
pub const STAGING_CANDIDATES: &[&str] = &["/tmp", "/mnt"];

/// Where the old root is attached inside the new one.
pub const OLD_ROOT: &str = crate::layout::ROM_NAME;
/// Where the upper's filesystem appears inside the new root.
pub const UPPER_MOUNT: &str = crate::layout::OVERLAY_NAME;

/// Filesystem types `/` has when the kernel unpacked an initramfs into it.
const INITRAMFS_FSTYPES: &[&str] = &["rootfs", "tmpfs", "ramfs"];

/// How this boot started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMode {
    /// `/` is the initramfs: mount the lower, then switch_root.
    Initramfs,
    /// `/` is a real filesystem the kernel mounted: it is the lower; pivot_root.
    Router(RootMount),
}

/// The mount at `/`, from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    pub fstype: String,
    /// The mount source (`/dev/root` for a root the kernel mounted).
    pub source: String,
    /// `MAJOR:MINOR` of the filesystem.
    pub device: String,
    pub read_only: bool,
}

/// The boot mode from mountinfo: what is mounted at `/`. The last entry for
/// `/` wins, since a later mount there hides the earlier ones.
pub fn boot_mode_from_mountinfo(text: &str) -> Result<BootMode> {
    let entries = parse_mountinfo(text);
    let Some(root) = entries.iter().rev().find(|e| e.mount_point == "/") else {
        bail!("mountinfo lists no mount at /");
    };
    if INITRAMFS_FSTYPES.contains(&root.fstype.as_str()) {
        return Ok(BootMode::Initramfs);
    }
    Ok(BootMode::Router(RootMount {
        fstype: root.fstype.clone(),
        source: root.source.clone(),
        device: root.device.clone(),
        read_only: root.mount_options.split(',').any(|o| o == "ro"),
    }))
}

/// Detect the boot mode; call as PID 1, after /proc is mounted. Without a
/// readable mountinfo, the filesystem type of `/` decides.
pub fn detect_boot_mode() -> Result<BootMode> {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => boot_mode_from_mountinfo(&text),
        Err(err) => {
            log::warn!("reading /proc/self/mountinfo: {err}; judging / by its filesystem type");
            if sys::pivot::root_is_ram_filesystem()? {
                Ok(BootMode::Initramfs)
            } else {
                Ok(BootMode::Router(RootMount {
                    fstype: "unknown".into(),
                    source: "/dev/root".into(),
                    device: String::new(),
                    read_only: sys::mount::is_read_only(Path::new("/"))?,
                }))
            }
        }
    }
}

/// The first candidate that exists as a directory and has nothing mounted on
/// it yet (a tmpfs some earlier step put there is not ours to hide).
pub fn choose_staging_dir(
    candidates: &[&str],
    is_dir: impl Fn(&Path) -> bool,
    is_mountpoint: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    candidates
        .iter()
        .map(Path::new)
        .find(|p| is_dir(p) && !is_mountpoint(p))
        .map(Path::to_path_buf)
}

/// Where extra lowers (and an image's host filesystem) are mounted: in
/// `/run/overlay-init` as in initramfs mode when `/run` is a mounted tmpfs
/// (it moves into the new root and they stay visible there); else inside the
/// staging tmpfs, detached after the pivot (the overlay keeps them alive).
/// OpenWrt images have no `/run` to mount on.
pub fn keep_dir(staging_dir: &Path, run_is_mounted: bool) -> PathBuf {
    if run_is_mounted {
        PathBuf::from(crate::layout::RUN_DIR)
    } else {
        staging_dir.join("keep")
    }
}

/// Mount the staging tmpfs on the first usable [`STAGING_CANDIDATES`] entry
/// and return the staging layout inside it (`root/`, `overlay/`), with extra
/// lowers in [`keep_dir`].
pub fn prepare_staging() -> Result<Staging> {
    let dir = choose_staging_dir(STAGING_CANDIDATES, |p| p.is_dir(), is_mountpoint).with_context(
        || {
            format!(
                "router mode needs an empty directory on the read-only root to mount its staging \
                 tmpfs on; none of {} exists (or each is already a mount point)",
                STAGING_CANDIDATES.join(", ")
            )
        },
    )?;
    mount_staging_tmpfs(&dir)?;
    let keep = keep_dir(&dir, is_mountpoint(Path::new("/run")));
    Ok(Staging::new(dir, keep))
}

/// Mount the staging tmpfs at `dir`. It only holds mount points (the upper
/// tmpfs is a mount of its own), so it is tiny.
pub fn mount_staging_tmpfs(dir: &Path) -> Result<()> {
    mount_fs(
        "overlay-init-staging",
        dir,
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=0700,size=1m",
    )
    .context("mount the router-mode staging tmpfs")
}

/// The overlay's lower layers in router mode, topmost first: the running root
/// itself, then the `ovl.lower=` mounts.
pub fn lowers(extra_lowers: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = vec![PathBuf::from("/")];
    all.extend(extra_lowers.iter().cloned());
    all
}

/// Create `/rom` and `/overlay` in the new root (in the upper if the image
/// lacks them) and move the upper's filesystem to `/overlay`.
pub fn move_upper_into_root(staging: &Staging) -> Result<()> {
    let root = staging.root();
    ensure_dir(&root.join(OLD_ROOT))?;
    move_mount(&staging.upper_fs(), &root.join(UPPER_MOUNT))
}

/// The real init in router mode: the kernel's `init=` names overlay-init
/// itself, so it is `ovl.init=` or else the default. `argv0` is the path the
/// kernel started us by; a real init equal to it would exec ourselves again.
pub fn real_init(config: &Config, argv0: &str) -> Result<String> {
    let init = config.ovl_init.as_deref().unwrap_or(DEFAULT_INIT);
    if init == argv0 {
        bail!(
            "the real init would be {init}, which is overlay-init itself: set ovl.init= to the \
             system's init (e.g. ovl.init=/sbin/procd) or start overlay-init by another path"
        );
    }
    Ok(init.to_string())
}

/// Move the API filesystems (those of `api_mounts` that are mounted) into
/// the new root. `/` is made private first: pivot_root refuses shared mounts.
pub fn move_api_mounts(staging: &Staging, api_mounts: &[&str]) -> Result<()> {
    let root = staging.root();
    // pivot_root refuses shared mounts; a kernel-mounted root normally is
    // private already, but nothing before us promised that.
    make_rprivate(Path::new("/"))?;
    for target in api_mounts {
        let target = Path::new(target);
        if !is_mountpoint(target) {
            log::debug!("{} is not mounted, not moving it", target.display());
            continue;
        }
        let inside = root.join(relative(target));
        move_mount(target, &inside)?;
    }
    Ok(())
}

/// The point of no return: pivot_root into the new root with the old root
/// at `/rom`, and detach the staging tmpfs from under `/rom`.
pub fn pivot_into_new_root(staging: &Staging) -> Result<()> {
    sys::pivot::pivot_root(&staging.root(), OLD_ROOT)?;
    let old_staging = Path::new("/").join(OLD_ROOT).join(relative(&staging.dir));
    // Lazy: the overlay keeps its own private references to the extra lowers
    // mounted in there.
    umount(&old_staging, true)
        .with_context(|| format!("detach the staging tmpfs at {}", old_staging.display()))?;
    Ok(())
}

fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITRAMFS_MOUNTINFO: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw,size=1001472k,nr_inodes=250368
20 1 0:19 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
21 1 0:20 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
";

    const ROUTER_MOUNTINFO: &str = "\
15 1 254:1 / / ro,relatime - squashfs /dev/root ro,errors=continue
16 15 0:5 / /dev rw,nosuid,relatime - devtmpfs devtmpfs rw,size=61036k,mode=755
17 15 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
";

    #[test]
    fn initramfs_root_is_not_router_mode() {
        assert_eq!(
            boot_mode_from_mountinfo(INITRAMFS_MOUNTINFO).unwrap(),
            BootMode::Initramfs
        );
        let tmpfs = "1 1 0:2 / / rw - tmpfs rootfs rw\n";
        assert_eq!(
            boot_mode_from_mountinfo(tmpfs).unwrap(),
            BootMode::Initramfs
        );
        let ramfs = "1 1 0:2 / / rw - ramfs none rw\n";
        assert_eq!(
            boot_mode_from_mountinfo(ramfs).unwrap(),
            BootMode::Initramfs
        );
    }

    #[test]
    fn kernel_mounted_squashfs_is_router_mode() {
        assert_eq!(
            boot_mode_from_mountinfo(ROUTER_MOUNTINFO).unwrap(),
            BootMode::Router(RootMount {
                fstype: "squashfs".into(),
                source: "/dev/root".into(),
                device: "254:1".into(),
                read_only: true,
            })
        );
        let rw_ext4 = "15 1 254:1 / / rw,relatime - ext4 /dev/root rw\n";
        let BootMode::Router(root) = boot_mode_from_mountinfo(rw_ext4).unwrap() else {
            panic!("ext4 root is router mode");
        };
        assert!(!root.read_only);
    }

    #[test]
    fn the_topmost_mount_at_root_decides() {
        // A root filesystem mounted over the initramfs (as after switch_root).
        let stacked = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                       30 1 254:1 / / ro - erofs /dev/vda ro\n";
        assert!(matches!(
            boot_mode_from_mountinfo(stacked).unwrap(),
            BootMode::Router(RootMount { ref fstype, .. }) if fstype == "erofs"
        ));
        assert!(boot_mode_from_mountinfo("20 1 0:19 / /proc rw - proc proc rw\n").is_err());
    }

    #[test]
    fn staging_goes_on_the_first_free_directory() {
        let dirs = ["/tmp", "/mnt"];
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        assert_eq!(
            choose_staging_dir(&dirs, all, none),
            Some(PathBuf::from("/tmp"))
        );
        let no_tmp = |p: &Path| p != Path::new("/tmp");
        assert_eq!(
            choose_staging_dir(&dirs, no_tmp, none),
            Some(PathBuf::from("/mnt"))
        );
        let tmp_mounted = |p: &Path| p == Path::new("/tmp");
        assert_eq!(
            choose_staging_dir(&dirs, all, tmp_mounted),
            Some(PathBuf::from("/mnt"))
        );
        assert_eq!(choose_staging_dir(&dirs, none, none), None);
    }

    #[test]
    fn router_lowers_start_with_the_running_root() {
        let s = Staging::new("/tmp", keep_dir(Path::new("/tmp"), false));
        assert_eq!(
            lowers(&[s.extra_lower(0)]),
            vec![PathBuf::from("/"), PathBuf::from("/tmp/keep/lower0")]
        );
        let with_run = keep_dir(Path::new("/tmp"), true);
        assert_eq!(with_run, PathBuf::from("/run/overlay-init"));
        let (upper, work) = crate::overlay::upper_dirs(&s.upper_fs());
        assert_eq!(
            crate::overlay::overlay_options(&lowers(&[]), &upper, &work).unwrap(),
            "lowerdir=/,upperdir=/tmp/overlay/upper,workdir=/tmp/overlay/work,\
             index=off,metacopy=off,redirect_dir=off,xino=off"
        );
    }

    #[test]
    fn real_init_is_ovl_init_or_the_default_never_ourselves() {
        let mut c = Config {
            kernel_init: Some("/sbin/overlay-init".into()),
            ..Config::default()
        };
        assert_eq!(real_init(&c, "/sbin/overlay-init").unwrap(), "/sbin/init");
        c.ovl_init = Some("/sbin/procd".into());
        assert_eq!(real_init(&c, "/sbin/overlay-init").unwrap(), "/sbin/procd");
        // Installed as /sbin/init and found by the kernel's default search.
        c.ovl_init = None;
        let err = real_init(&c, "/sbin/init").unwrap_err();
        assert!(err.to_string().contains("ovl.init="), "{err}");
    }
}
