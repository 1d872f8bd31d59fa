//! PID 1 in router mode: the kernel mounted the root itself (`root=... init=/sbin/overlay-init`,
//! no initramfs), so `/` is the lower. The upper, reset, failsafe and fallbacks are the
//! initramfs mode's own ([`upper::assemble_upper_and_overlay`]); what differs is around them:
//!
//! - the API filesystems are mounted only where the read-only root has a directory for them
//!   (OpenWrt images have no `/run`);
//! - `root=` is not waited for (it is mounted), only `ovl.upper=` and `ovl.lower=` devices;
//! - kernel modules are optional: loaded from `/lib/modules/overlay-init.index` on the root
//!   when it exists (a router kernel has what it needs built in);
//! - the assembly happens on a small staging tmpfs over `/tmp` (see [`router`]), the real
//!   init is `ovl.init=` or `/sbin/init` ([`router::real_init`]: the kernel's `init=` names
//!   overlay-init itself), and `pivot_root` puts the old root at `/rom`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::boot;
use crate::cmdline::{Config, UpperSpec};
use crate::lower;
use crate::router::{self, RootMount};
use crate::sys;
use crate::timeline::{StepError, Timeline};
use crate::upper::{self, UpperKind};

/// The API mounts router mode moves into the overlay, in an order that keeps
/// `/proc` (which `is_mountpoint` reads) for last.
pub const MOVED_API_MOUNTS: &[&str] = &["/run", "/dev", "/sys", "/proc"];

/// Which [`boot::API_MOUNTS`] entries router mode mounts: those whose directory
/// exists on the root (it is read-only: a missing one cannot be created).
pub fn api_mounts_to_mount(dir_exists: impl Fn(&Path) -> bool) -> Vec<&'static str> {
    boot::API_MOUNTS
        .iter()
        .map(|(_, target, _, _)| *target)
        .filter(|target| dir_exists(Path::new(target)))
        .collect()
}

/// What router mode refuses before touching anything: `ovl.image=` needs the
/// lower mounted from a file, but here the kernel's root already is the lower.
pub fn check_router_config(config: &Config) -> Result<()> {
    if let Some(image) = &config.image {
        bail!(
            "ovl.image={image} needs initramfs mode: in router mode the root the kernel mounted \
             is the lower (boot with an initramfs, or put the image's content on root=)"
        );
    }
    Ok(())
}

/// The devices router mode waits for: the `ovl.lower=` devices (a missing one is
/// fatal) and the upper (a missing one degrades to tmpfs).
#[derive(Debug, Default)]
pub struct RouterDevices {
    pub upper: Option<PathBuf>,
    pub lowers: Vec<PathBuf>,
}

/// The entry point when running as PID 1 on a root the kernel mounted. Never returns.
pub fn run_router_pid1() -> ! {
    let boot::Prologue {
        started,
        mut timeline,
        kmsg_ratelimit,
        uptime_start,
        config,
    } = boot::prologue(mount_api_filesystems);
    let root = match router::detect_boot_mode() {
        Ok(router::BootMode::Router(root)) => root,
        Ok(router::BootMode::Initramfs) => {
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
        "starting in router mode (uptime {:.3} s): / is {} from {} ({}), upper={}",
        uptime_start.unwrap_or_default(),
        root.fstype,
        root.source,
        if root.read_only { "ro" } else { "rw" },
        boot::upper_name(&config)
    );
    let argv0 = std::env::args().next().unwrap_or_default();
    let (init, staging, upper) = match assemble_router(&config, &argv0, &mut timeline) {
        Ok(done) => done,
        Err(e) => crate::fail::fatal(e.step, &e.error, config.onfail),
    };
    upper::record_boot(&config, &staging, &upper);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Err(e) = timeline.step("pivot root", || {
        router::pivot_into_overlay(&staging, MOVED_API_MOUNTS)
    }) {
        crate::fail::fatal(e.step, &e.error, config.onfail);
    }
    let _ = sys::switch::reopen_console();
    crate::logger::attach_kmsg();
    boot::log_handover(&init, started, &timeline, "router mode");
    upper::start_trash_cleanup(&upper);
    sys::kmsg::restore_ratelimit(kmsg_ratelimit);
    let error = sys::switch::exec_init(&init, &args);
    crate::fail::fatal("exec init", &error, config.onfail)
}

fn unknown_root() -> RootMount {
    RootMount {
        fstype: "unknown".into(),
        source: "/dev/root".into(),
        device: String::new(),
        read_only: sys::mount::is_read_only(Path::new("/")).unwrap_or(true),
    }
}

/// Mount /proc, /sys, /dev, and /run where the root has a directory for it.
fn mount_api_filesystems() -> Result<()> {
    let wanted = api_mounts_to_mount(|p| p.is_dir());
    for (source, target, fstype, data) in boot::API_MOUNTS {
        if wanted.contains(target) {
            boot::mount_api_filesystem(source, Path::new(target), fstype, data)?;
        } else {
            log::info!("{target} is not a directory on the root: not mounting {fstype} there");
        }
    }
    Ok(())
}

/// Everything up to a checked overlay at `staging.root()` with the upper at
/// `/overlay` inside it: returns the real init, the staging, and the upper kind.
fn assemble_router(
    config: &Config,
    argv0: &str,
    timeline: &mut Timeline,
) -> std::result::Result<(String, crate::overlay::Staging, UpperKind), StepError> {
    let init = timeline.step("command line", || {
        check_router_config(config)?;
        router::real_init(config, argv0)
    })?;
    let early_failsafe = crate::failsafe::early_reason(config, boot::failsafe_key_window(config));
    // Optional: a router kernel has its drivers built in.
    timeline.step("modules", || boot::load_modules(config))?;
    let devices = timeline.step("device wait", || find_router_devices(config))?;
    let staging = timeline.step("staging", router::prepare_staging)?;
    // The root is the lower; its device guards the reset.
    let root_dev = timeline.step("lower", || sys::mount::dev_of(Path::new("/")))?;
    // Files named in ovl.lower= live on the root= filesystem, which is `/`.
    let extra = timeline.step("extra lowers", || {
        lower::mount_extra_lowers(config, &devices.lowers, Path::new("/"), &staging)
    })?;
    let upper = upper::assemble_upper_and_overlay(
        config,
        &staging,
        &router::lowers(&extra),
        root_dev,
        devices.upper.as_deref(),
        early_failsafe,
        timeline,
    )?;
    timeline.step("move layers", || router::move_upper_into_root(&staging))?;
    timeline.step("check init", || {
        sys::switch::check_init(&staging.root(), &init)
    })?;
    Ok((init, staging, upper))
}

/// Wait for the `ovl.lower=` devices (fatal when missing) and the upper device
/// (a missing one boots on tmpfs, as in initramfs mode). `root=` is mounted.
fn find_router_devices(config: &Config) -> Result<RouterDevices> {
    let lowers = lower::lower_device_specs(config);
    let upper = match &config.upper {
        UpperSpec::Device(d) => Some(d),
        UpperSpec::Tmpfs => None,
    };
    if lowers.is_empty() && upper.is_none() {
        return Ok(RouterDevices::default());
    }
    let (lowers, upper) = lower::wait_for_devices(config, &lowers, upper)?;
    Ok(RouterDevices { upper, lowers })
}

/// Whether this PID 1 runs on a root the kernel mounted (router mode) rather
/// than on an initramfs. Needs nothing mounted: `/` is judged by its
/// filesystem type, so it can run before /proc exists.
pub fn is_router_boot() -> bool {
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
        let err = check_router_config(&config).unwrap_err().to_string();
        assert!(err.contains("ovl.image=/images/root.sqsh"), "{err}");
        assert!(err.contains("initramfs mode"), "{err}");
        assert!(check_router_config(&Config::default()).is_ok());
    }

    #[test]
    fn proc_is_moved_last() {
        assert_eq!(MOVED_API_MOUNTS.last(), Some(&"/proc"));
        for (_, target, _, _) in boot::API_MOUNTS {
            assert!(MOVED_API_MOUNTS.contains(target), "{target} is not moved");
        }
    }
}
