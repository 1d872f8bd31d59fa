//! The bodies of the steps both modes share (see the sequence in [`super`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rustix::mount::MountFlags;

use crate::cmdline::{self, Config, UpperSpec};
use crate::failsafe;
use crate::sys;
use crate::sys::mount::mount_fs;
use crate::timeline::Timeline;

/// The API filesystems PID 1 mounts first, in order.
pub const API_MOUNTS: &[(&str, &str, &str, &str)] = &[
    // (source, target, fstype, data)
    ("proc", "/proc", "proc", ""),
    ("sysfs", "/sys", "sysfs", ""),
    ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
    ("tmpfs", "/run", "tmpfs", "mode=0755"),
];

/// Mount one [`API_MOUNTS`] entry unless something is mounted there already.
pub fn mount_api_filesystem(source: &str, target: &Path, fstype: &str, data: &str) -> Result<()> {
    // The kernel may have mounted it already (devtmpfs with DEVTMPFS_MOUNT).
    if sys::mount::has_other_fs_mounted(target) {
        return Ok(());
    }
    let flags = match fstype {
        "proc" | "sysfs" => MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOSUID,
        "devtmpfs" => MountFlags::NOSUID,
        _ => MountFlags::NODEV | MountFlags::NOSUID,
    };
    mount_fs(source, target, fstype, flags, data)
}

/// Log to `/dev/kmsg` too, lift its rate limit for the boot: returns the
/// limit to restore before the handover, and the kernel's uptime.
pub fn setup_log() -> Result<(Option<String>, Option<Duration>)> {
    crate::logger::attach_kmsg();
    Ok((sys::kmsg::lift_ratelimit(), sys::kmsg::uptime()))
}

/// The kernel command-line parameter (`OVL_TEST_PANIC=1`) that makes PID 1
/// panic after reading the command line, for tests of the panic path.
pub const TEST_PANIC_ENV: &str = "OVL_TEST_PANIC";

/// Test seam: the kernel hands an unknown `NAME=VALUE` parameter to init as
/// its environment; this one proves that a panic in PID 1 reaches the
/// failure handler in the real (panic = "abort") binary.
pub fn test_panic_seam() {
    if std::env::var_os(TEST_PANIC_ENV).is_some() {
        panic!("{TEST_PANIC_ENV} is set: a deliberate panic to test the failure path");
    }
}

/// `tmpfs` or the device spec, for log lines.
pub fn upper_name(config: &Config) -> String {
    match &config.upper {
        UpperSpec::Tmpfs => "tmpfs".to_string(),
        UpperSpec::Device(d) => d.to_string(),
        UpperSpec::File(path) => path.clone(),
        UpperSpec::Flash(spec) => spec.to_string(),
    }
}

/// Read and check `/proc/cmdline`: problems are logged, a fatal one ends the
/// boot (with the failure handler). Sets the log level and the panic hook.
pub fn load_config() -> Config {
    // Bytes: one parameter that is not UTF-8 is reported and left out, the
    // rest is used (read_to_string would have dropped the whole line).
    let (cmdline_text, not_utf8) = match std::fs::read("/proc/cmdline") {
        Ok(bytes) => crate::cmdline_bytes::decode(&bytes),
        Err(e) => {
            log::error!("read /proc/cmdline: {e}; booting with no parameters");
            (String::new(), Vec::new())
        }
    };
    let mut parsed = cmdline::parse(&cmdline_text);
    parsed.problems.extend(not_utf8);
    crate::logger::set_debug(parsed.config.debug);
    crate::boot::failure::install_panic_hook(parsed.config.onfail);
    for problem in &parsed.problems {
        if problem.fatal {
            log::error!("{problem}");
        } else {
            log::warn!("{problem}");
        }
    }
    let config = parsed.config.clone();
    if parsed.has_fatal() {
        let names: Vec<_> = parsed
            .problems
            .iter()
            .filter(|p| p.fatal)
            .map(|p| p.to_string())
            .collect();
        let err = anyhow!("{}", names.join("; "));
        crate::boot::failure::fatal("command line", &err, config.onfail);
    }
    config
}

/// The failsafe key window (`ovl.failsafe_wait=N`, a console attached): was
/// `f` + Enter typed?
pub fn failsafe_key_window(config: &Config) -> bool {
    let Some(window) = failsafe::key_window(config, sys::console_key::console_attached()) else {
        return false;
    };
    match sys::console_key::wait_on_console(failsafe::KEY_PROMPT, window, failsafe::is_failsafe_key)
    {
        Ok(sys::console_key::KeyWait::Accepted) => {
            log::info!("failsafe key pressed");
            true
        }
        Ok(_) => false,
        Err(e) => {
            log::warn!("failsafe key window: {e:#}");
            false
        }
    }
}

/// Modules loaded only when a mount needs them (see `overlay::mount_*` and
/// `mount_image`): a squashfs boot with a tmpfs upper loads no erofs or loop.
pub const ON_DEMAND_MODULES: &[&str] = &[
    "squashfs",
    "erofs",
    "ext4",
    "overlay",
    "loop",
    // The device-mapper stack (and what only it needs), only for `ovl.verity=`:
    // crate::verity::MODULES.
    "dm_verity",
    // Image hosts (`ovl.image=` on an ISO or a FAT/exFAT stick, the `--live`
    // preset): hostmount::mount_image_host loads the one it mounts.
    "isofs",
    "vfat",
    "exfat",
    "nls_cp437",
    "nls_ascii",
];

/// Load the kernel modules the module index lists, if there is one
/// (`ovl.modules=` says how). A module that fails is logged by name; the boot
/// goes on, and fails later only if a device or filesystem is then missing.
/// Optional in either mode: a router kernel has its drivers built in.
pub fn load_modules(config: &Config) -> Result<()> {
    let index = Path::new(crate::modindex::INDEX_PATH);
    if !index.exists() {
        return Ok(());
    }
    let parallel = config.modules.parallel_with(sys::modules::usable_cpus());
    log::debug!(
        "module loading: {}",
        if parallel { "parallel" } else { "sequential" }
    );
    // Each module's outcome is logged by the loader (a failure by name, with the kernel's error).
    let report = sys::modules::load_eager(index, parallel, ON_DEMAND_MODULES)?;
    log::debug!("{} modules in {:?}", report.modules.len(), report.total);
    Ok(())
}

/// `rootdelay=SECS`: wait as asked (the one wait that is a plain sleep, by
/// the parameter's definition).
pub fn root_delay(secs: u32) -> Result<()> {
    log::info!("rootdelay={secs}: waiting {secs} s as asked");
    std::thread::sleep(Duration::from_secs(secs.into()));
    Ok(())
}

/// Point the standard streams at the new root's console; a failure is
/// logged (the boot goes on: the real init opens its own console).
pub fn reopen_console() {
    if let Err(e) = sys::switch::reopen_console() {
        log::warn!("console not reopened in the new root: {e:#}");
    }
}

/// The one-line summary before the exec: time since PID 1 started, kernel
/// uptime, peak memory, `notes`, and every step's duration.
pub fn log_handover(init: &str, started: std::time::Instant, timeline: &Timeline, notes: &str) {
    log::info!(
        "handover to {init} after {} ms (uptime {} s, peak memory {}, {notes}): {}",
        crate::decimal::millis(started.elapsed(), 1),
        crate::decimal::secs(sys::kmsg::uptime().unwrap_or_default(), 3),
        sys::kmsg::vm_hwm().unwrap_or_default(),
        timeline.summary()
    );
}
