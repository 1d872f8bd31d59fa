//! The kernel-mounted root's part of each step (router mode): the kernel
//! mounted the root itself (`root=... init=/sbin/overlay-init`, no
//! initramfs), so `/` is the lower. What differs from an initramfs:
//!
//! - the API filesystems are mounted only where the read-only root has a directory for them
//!   (OpenWrt images have no `/run`);
//! - `root=` is not waited for (it is mounted), only `ovl.upper=` and `ovl.lower=` devices;
//! - the assembly happens on a small staging tmpfs over `/tmp` (see [`crate::mounted_root`]), the
//!   real init is `ovl.init=` or `/sbin/init` ([`mounted_root::real_init`]: the kernel's `init=`
//!   names overlay-init itself), and `pivot_root` puts the old root at `/rom`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::steps::{mount_api_filesystem, upper_name, API_MOUNTS};
use super::{Devices, MainLower};
use crate::cmdline::{Config, UpperSpec};
use crate::lower;
use crate::mounted_root::{self, RootMount};
use crate::overlay::Staging;
use crate::sys;

/// The API mounts router mode moves into the overlay, in an order that keeps
/// `/proc` (which `is_mountpoint` reads) for last.
pub const MOVED_API_MOUNTS: &[&str] = &["/run", "/dev", "/sys", "/proc"];

/// Which [`API_MOUNTS`] entries router mode mounts: those whose directory
/// exists on the root (it is read-only: a missing one cannot be created).
pub fn api_mounts_to_mount(dir_exists: impl Fn(&Path) -> bool) -> Vec<&'static str> {
    API_MOUNTS
        .iter()
        .map(|(_, target, _, _)| *target)
        .filter(|target| dir_exists(Path::new(target)))
        .collect()
}

/// Mount /proc, /sys, /dev, and /run where the root has a directory for it.
pub fn mount_api_filesystems() -> Result<()> {
    let wanted = api_mounts_to_mount(|p| p.is_dir());
    for (source, target, fstype, data) in API_MOUNTS {
        if wanted.contains(target) {
            mount_api_filesystem(source, Path::new(target), fstype, data)?;
        } else {
            log::info!("{target} is not a directory on the root: not mounting {fstype} there");
        }
    }
    Ok(())
}

pub fn log_start(config: &Config, uptime: Option<std::time::Duration>) {
    let root = match mounted_root::detect_boot_mode() {
        Ok(mounted_root::BootMode::Router(root)) => root,
        Ok(mounted_root::BootMode::Initramfs) => {
            // main() judged by statfs; mountinfo disagrees. Say so, carry on.
            log::warn!("mountinfo shows an initramfs at /, but / is not a ramfs/tmpfs");
            unknown_root()
        }
        Err(e) => {
            log::warn!("boot mode: {e:#}");
            unknown_root()
        }
    };
    log::info!(
        "starting in router mode (uptime {} s): / is {} from {} ({}), upper={}",
        crate::decimal::secs(uptime.unwrap_or_default(), 3),
        root.fstype,
        root.source,
        if root.read_only { "ro" } else { "rw" },
        upper_name(config)
    );
}

fn unknown_root() -> RootMount {
    RootMount {
        fstype: "unknown".into(),
        source: "/dev/root".into(),
        device: String::new(),
        read_only: sys::mount::is_read_only(Path::new("/")).unwrap_or(true),
    }
}

/// What router mode refuses before touching anything (`ovl.image=` needs the
/// lower mounted from a file, but here the kernel's root already is the
/// lower); returns the real init ([`mounted_root::real_init`]).
pub fn check_config(config: &Config, argv0: &str) -> Result<String> {
    if let Some(image) = &config.image {
        bail!(
            "ovl.image={image} needs initramfs mode: in router mode the root the kernel mounted \
             is the lower (boot with an initramfs, or put the image's content on root=)"
        );
    }
    if config.verity.is_some() {
        bail!(
            "ovl.verity= needs initramfs mode: in router mode the kernel mounted the root \
             before overlay-init ran (verify it with the kernel's dm-mod.create=, or use an initramfs)"
        );
    }
    mounted_root::real_init(config, argv0)
}

/// Wait for the `ovl.lower=` devices (fatal when missing) and the upper device
/// (a missing one boots on tmpfs, as in initramfs mode). `root=` is mounted.
pub fn find_devices(config: &Config) -> Result<Devices> {
    let lowers = lower::lower_device_specs(config);
    let upper = match &config.upper {
        UpperSpec::Device(d) => Some(d),
        // A flash upper is waited for by the upper step (boot::flash), not as a block device.
        UpperSpec::Tmpfs | UpperSpec::File(_) | UpperSpec::Flash(_) => None,
    };
    if lowers.is_empty() && upper.is_none() {
        return Ok(Devices::default());
    }
    let (lowers, upper) = lower::wait_for_devices(config, &lowers, upper)?;
    Ok(Devices {
        root: None,
        upper,
        lowers,
        verity_hash: None,
    })
}

/// The root is the lower, used as it is: `lowerdir=/`. Files named in
/// `ovl.lower=` live on it too. Its device guards the reset.
pub fn mount_lower() -> Result<MainLower> {
    Ok(MainLower {
        path: PathBuf::from("/"),
        dev: sys::mount::dev_of(Path::new("/"))?,
        files_base: PathBuf::from("/"),
    })
}

/// Move the API filesystems that are mounted into the new root.
pub fn move_api_mounts(staging: &Staging) -> Result<()> {
    mounted_root::move_api_mounts(staging, MOVED_API_MOUNTS)
}

/// Whether this PID 1 runs on a root the kernel mounted (router mode) rather
/// than on an initramfs. Needs nothing mounted: `/` is judged by its
/// filesystem type, so it can run before /proc exists.
pub fn is_kernel_root() -> bool {
    matches!(sys::pivot::root_is_ram_filesystem(), Ok(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_mounts_skip_a_missing_run() {
        let openwrt = |p: &Path| p != Path::new("/run");
        assert_eq!(api_mounts_to_mount(openwrt), vec!["/proc", "/sys", "/dev"]);
        assert_eq!(
            api_mounts_to_mount(|_| true),
            vec!["/proc", "/sys", "/dev", "/run"]
        );
    }

    #[test]
    fn image_lower_is_refused_in_router_mode() {
        let config = Config {
            image: Some("/images/root.sqsh".into()),
            ..Config::default()
        };
        let err = check_config(&config, "/sbin/overlay-init")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ovl.image=/images/root.sqsh"), "{err}");
        assert!(err.contains("initramfs mode"), "{err}");
        assert!(check_config(&Config::default(), "/sbin/overlay-init").is_ok());
        let verified = crate::cmdline::parse(
            "ovl.verity=4392712ba01368efdf14b05c76f9e4df0d53664630b5d48632ed17a137f39076 \
             ovl.verity_hashoffset=4096",
        )
        .config;
        let err = check_config(&verified, "/sbin/overlay-init")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ovl.verity= needs initramfs mode"), "{err}");
    }

    #[test]
    fn proc_is_moved_last() {
        assert_eq!(MOVED_API_MOUNTS.last(), Some(&"/proc"));
        for (_, target, _, _) in API_MOUNTS {
            assert!(MOVED_API_MOUNTS.contains(target), "{target} is not moved");
        }
    }
}
