//! PID 1 in an initramfs: the boot, as a list of named steps (see `timeline`):
//! API filesystems, command line, modules, the layers (`lower`, `upper`), then
//! the handover. Every error carries its step's name to the failure handler.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rustix::mount::MountFlags;

use crate::cmdline::{self, Config, UpperSpec};
use crate::devspec::DeviceSpec;
use crate::failsafe;
use crate::lower::{
    find_devices, lower_device_specs, mount_extra_lowers, mount_image, mount_lower,
};
use crate::overlay::{self, Staging};
use crate::sys;
use crate::sys::mount::{ensure_dir, mount_fs, move_mount};
use crate::timeline::{StepError, Timeline};
use crate::upper::{assemble_upper_and_overlay, record_boot, start_trash_cleanup, UpperKind};

/// Where the layers are assembled inside the initramfs: the lower at `/rom`,
/// the upper's filesystem at `/overlay`, the overlay at `/sysroot`. Those are
/// the paths the new root sees too, so the overlay's options in
/// `/proc/mounts` (`lowerdir=/rom,upperdir=/overlay/upper,...`) stay true after
/// the switch.
pub const STAGING_DIR: &str = "/";

/// Mounts that stay visible in the new system (extra lowers, an image's host).
pub const KEEP_DIR: &str = "/run/overlay-init";

/// The API filesystems PID 1 mounts first, in order.
pub const API_MOUNTS: &[(&str, &str, &str, &str)] = &[
    // (source, target, fstype, data)
    ("proc", "/proc", "proc", ""),
    ("sysfs", "/sys", "sysfs", ""),
    ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
    ("tmpfs", "/run", "tmpfs", "mode=0755"),
];

/// Mount /proc, /sys, /dev and /run (an already-mounted one is left alone).
pub fn mount_api_filesystems() -> Result<()> {
    for (source, target, fstype, data) in API_MOUNTS {
        mount_api_filesystem(source, Path::new(target), fstype, data)?;
    }
    Ok(())
}

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

/// The kernel command-line parameter (`OVL_TEST_PANIC=1`) that makes PID 1
/// panic after reading the command line, for tests of the panic path.
pub const TEST_PANIC_ENV: &str = "OVL_TEST_PANIC";

/// What every PID 1 has after its first steps, in either mode.
pub struct Prologue {
    pub started: Instant,
    pub timeline: Timeline,
    /// The kmsg rate limit to restore before the handover.
    pub kmsg_ratelimit: Option<String>,
    pub uptime_start: Option<f64>,
    pub config: Config,
}

/// The first steps of PID 1: logger and panic hook, the API filesystems (by
/// `mount_api`), kmsg, the command line. A failure here ends in the failure
/// handler.
pub fn prologue(mount_api: fn() -> Result<()>) -> Prologue {
    let started = Instant::now();
    crate::logger::init_pid1(false);
    crate::fail::install_panic_hook(None);
    let mut timeline = Timeline::default();
    let fatal = |e: StepError| -> ! { crate::fail::fatal(e.step, &e.error, None) };
    timeline
        .step("api mounts", mount_api)
        .unwrap_or_else(|e| fatal(e));
    let (kmsg_ratelimit, uptime_start) = timeline
        .step("log setup", || {
            crate::logger::attach_kmsg();
            Ok((sys::kmsg::lift_ratelimit(), sys::kmsg::uptime()))
        })
        .unwrap_or_else(|e| fatal(e));
    let config = timeline
        .step("command line", || Ok(load_config()))
        .unwrap_or_else(|e| fatal(e));
    // Test seam: the kernel hands an unknown `NAME=VALUE` parameter to init as
    // its environment; this one proves that a panic in PID 1 reaches the
    // failure handler in the real (panic = "abort") binary.
    if std::env::var_os(TEST_PANIC_ENV).is_some() {
        panic!("{TEST_PANIC_ENV} is set: a deliberate panic to test the failure path");
    }
    Prologue {
        started,
        timeline,
        kmsg_ratelimit,
        uptime_start,
        config,
    }
}

/// `tmpfs` or the device spec, for log lines.
pub fn upper_name(config: &Config) -> String {
    match &config.upper {
        UpperSpec::Tmpfs => "tmpfs".to_string(),
        UpperSpec::Device(d) => d.to_string(),
    }
}

/// The entry point when running as PID 1 from an initramfs. Never returns.
pub fn run_pid1() -> ! {
    let Prologue {
        started,
        mut timeline,
        kmsg_ratelimit,
        uptime_start,
        config,
    } = prologue(mount_api_filesystems);
    log::info!(
        "starting (uptime {:.3} s): root={} upper={}",
        uptime_start.unwrap_or_default(),
        config
            .root
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "(none)".into()),
        upper_name(&config)
    );

    let key = timeline
        .step("failsafe window", || Ok(failsafe_key_window(&config)))
        .unwrap_or_else(|e| crate::fail::fatal(e.step, &e.error, config.onfail));
    let early_failsafe = failsafe::early_reason(&config, key);
    let staging = Staging::new(STAGING_DIR, KEEP_DIR);
    let upper = match assemble(&config, &staging, &mut timeline, early_failsafe) {
        Ok(upper) => upper,
        Err(e) => crate::fail::fatal(e.step, &e.error, config.onfail),
    };
    let _ = timeline.step("record boot", || {
        record_boot(&config, &staging, &upper);
        Ok(())
    });
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let err = handover(
        &config,
        &staging,
        &mut timeline,
        started,
        kmsg_ratelimit,
        &args,
        &upper,
    );
    crate::fail::fatal(err.step, &err.error, config.onfail)
}

/// Read and check `/proc/cmdline`: problems are logged, a fatal one ends the
/// boot (with the failure handler). Sets the log level and the panic hook.
pub fn load_config() -> Config {
    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let parsed = cmdline::parse(cmdline_text.trim_end());
    crate::logger::set_debug(parsed.config.debug);
    crate::fail::install_panic_hook(parsed.config.onfail);
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
        crate::fail::fatal("command line", &err, config.onfail);
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
pub const ON_DEMAND_MODULES: &[&str] = &["squashfs", "erofs", "ext4", "overlay", "loop"];

/// Load the kernel modules the module index lists, if there is one
/// (`ovl.modules=` says how). A module that fails is logged by name; the boot
/// goes on, and fails later only if a device or filesystem is then missing.
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

/// Everything up to a mounted, checked new root at `staging.root()`.
/// `early_failsafe`: failsafe asked for by parameter or key.
pub fn assemble(
    config: &Config,
    staging: &Staging,
    timeline: &mut Timeline,
    early_failsafe: Option<failsafe::Reason>,
) -> std::result::Result<UpperKind, StepError> {
    timeline.step("modules", || load_modules(config))?;
    if let Some(delay) = config.rootdelay {
        timeline.step("rootdelay", || {
            log::info!("rootdelay={delay}: waiting {delay} s as asked");
            std::thread::sleep(Duration::from_secs(delay.into()));
            Ok(())
        })?;
    }
    let root_spec = config.root.clone().ok_or_else(|| StepError {
        step: "command line",
        error: anyhow!("root= is missing: name the read-only lower device (root=/dev/NAME, LABEL=, UUID=, PARTUUID=, PARTLABEL=)"),
    })?;
    let lower_devices: Vec<DeviceSpec> = lower_device_specs(config).into_iter().cloned().collect();
    let upper_device = match &config.upper {
        UpperSpec::Device(d) => Some(d.clone()),
        UpperSpec::Tmpfs => None,
    };
    let devices = timeline.step("device wait", || {
        find_devices(config, &root_spec, upper_device.as_ref(), &lower_devices)
    })?;

    let main_lower = timeline.step("lower", || match &config.image {
        None => mount_lower(
            &devices.root,
            config.rootfstype,
            config.rootflags.as_deref(),
            &staging.rom(),
        ),
        Some(image) => {
            // root= holds the image file: mount it read-only, loop-mount the file.
            let host = staging.image_host();
            mount_lower(&devices.root, None, None, &host)?;
            log::info!("ovl.image={image} on {}", devices.root.display());
            mount_image(
                &host,
                image,
                config.rootfstype,
                config.rootflags.as_deref(),
                &staging.rom(),
            )
        }
    })?;
    // Image files named in ovl.lower= live on the root= filesystem.
    let files_base = match config.image {
        Some(_) => staging.image_host(),
        None => staging.rom(),
    };
    let mut lowers = vec![staging.rom()];
    lowers.extend(timeline.step("extra lowers", || {
        mount_extra_lowers(config, &devices.lowers, &files_base, staging)
    })?);
    let upper = assemble_upper_and_overlay(
        config,
        staging,
        &lowers,
        main_lower,
        devices.upper.as_deref(),
        early_failsafe,
        timeline,
    )?;
    timeline.step("move layers", || overlay::move_layers_into_root(staging))?;
    timeline.step("check init", || {
        sys::switch::check_init(&staging.root(), &config.init)
    })?;
    Ok(upper)
}

/// The one-line summary before the exec: time since PID 1 started, kernel
/// uptime, peak memory, `notes`, and every step's duration.
pub fn log_handover(init: &str, started: Instant, timeline: &Timeline, notes: &str) {
    log::info!(
        "handover to {init} after {:.1} ms (uptime {:.3} s, peak memory {}, {notes}): {}",
        started.elapsed().as_secs_f64() * 1e3,
        sys::kmsg::uptime().unwrap_or_default(),
        sys::kmsg::vm_hwm().unwrap_or_default(),
        timeline.summary()
    );
}

/// Move the API filesystems into the new root, free the initramfs, switch root
/// and exec the real init. Returns only on failure.
fn handover(
    config: &Config,
    staging: &Staging,
    timeline: &mut Timeline,
    started: Instant,
    kmsg_ratelimit: Option<String>,
    args: &[OsString],
    upper: &UpperKind,
) -> StepError {
    let root = staging.root();
    if let Err(e) = timeline.step("move api mounts", || {
        for (_, target, _, _) in API_MOUNTS.iter().rev() {
            let inside = root.join(target.trim_start_matches('/'));
            ensure_dir(&inside)?;
            move_mount(Path::new(target), &inside)?;
        }
        Ok(())
    }) {
        return e;
    }
    // From here the API filesystems live under the new root.
    let freed = timeline.step("free initramfs", sys::switch::free_initramfs);
    let freed = match freed {
        Ok(stats) => stats,
        Err(e) => return e,
    };
    if let Err(e) = timeline.step("switch root", || sys::switch::enter_new_root(&root)) {
        return e;
    }
    let _ = sys::switch::reopen_console();
    crate::logger::attach_kmsg();
    let freed = format!(
        "initramfs freed: {} entries removed, {} kept (mount points)",
        freed.removed, freed.kept
    );
    log_handover(&config.init, started, timeline, &freed);
    start_trash_cleanup(upper);
    sys::kmsg::restore_ratelimit(kmsg_ratelimit);
    let error = sys::switch::exec_init(&config.init, args);
    StepError {
        step: "exec init",
        error,
    }
}
