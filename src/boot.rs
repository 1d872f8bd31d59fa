//! PID 1 in an initramfs: the boot, as a list of named steps. Every error carries
//! the step's name to the failure handler; every step's duration is logged.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustix::mount::MountFlags;

use crate::cmdline::{self, Config, LowerSpec, RootWait, UpperSpec};
use crate::devspec::DeviceSpec;
use crate::failsafe;
use crate::fstype::FsType;
use crate::overlay::{self, Staging};
use crate::sys;
use crate::sys::mount::{ensure_dir, mount_fs, move_mount};

/// Where the new root is assembled inside the initramfs.
pub const STAGING_DIR: &str = "/.ovl";
/// Mounts that stay visible in the new system (extra lowers, an image's host).
pub const KEEP_DIR: &str = "/run/overlay-init";
/// Default bound on waiting for devices when neither `rootwait` nor `ovl.timeout` says.
pub const DEFAULT_DEVICE_TIMEOUT: u32 = 30;

/// A failed step: its name and the error.
#[derive(Debug)]
pub struct StepError {
    pub step: &'static str,
    pub error: anyhow::Error,
}

/// The boot's timeline: each step's name and duration.
#[derive(Debug, Default)]
pub struct Timeline {
    pub steps: Vec<(&'static str, Duration)>,
}

impl Timeline {
    /// Run one named step, recording its duration; an error carries the name.
    pub fn step<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> std::result::Result<T, StepError> {
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        self.steps.push((name, took));
        log::debug!("step {name}: {:.1} ms", took.as_secs_f64() * 1e3);
        result.map_err(|error| StepError { step: name, error })
    }

    /// `name=1.2ms name=3.4ms ...`, the one-line summary.
    pub fn summary(&self) -> String {
        self.steps
            .iter()
            .map(|(name, d)| format!("{}={:.1}ms", name.replace(' ', "-"), d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

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
    if sys::mount::is_mountpoint(target) {
        return Ok(());
    }
    let flags = match fstype {
        "proc" | "sysfs" => MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOSUID,
        "devtmpfs" => MountFlags::NOSUID,
        _ => MountFlags::NODEV | MountFlags::NOSUID,
    };
    mount_fs(source, target, fstype, flags, data)
}

/// The entry point when running as PID 1 from an initramfs. Never returns.
pub fn run_pid1() -> ! {
    let started = Instant::now();
    crate::logger::init_pid1(false);
    crate::fail::install_panic_hook(None);
    let mut timeline = Timeline::default();
    if let Err(e) = timeline.step("api mounts", mount_api_filesystems) {
        crate::fail::fatal(e.step, &e.error, None);
    }
    let (kmsg_ratelimit, uptime_start) = timeline
        .step("log setup", || {
            crate::logger::attach_kmsg();
            Ok((sys::kmsg::lift_ratelimit(), sys::kmsg::uptime()))
        })
        .unwrap_or_else(|e| crate::fail::fatal(e.step, &e.error, None));
    let config = timeline
        .step("command line", || Ok(load_config()))
        .unwrap_or_else(|e| crate::fail::fatal(e.step, &e.error, None));
    log::info!(
        "starting (uptime {:.3} s): root={} upper={}",
        uptime_start.unwrap_or_default(),
        config
            .root
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "(none)".into()),
        match &config.upper {
            UpperSpec::Tmpfs => "tmpfs".to_string(),
            UpperSpec::Device(d) => d.to_string(),
        }
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

/// Before the handover, with the upper at `/overlay` in the new root: count
/// the boot attempt and write the state file for `overlay-init status`.
/// Shared by initramfs and router mode; failures are warnings.
pub fn record_boot(config: &Config, staging: &Staging, upper: &UpperKind) {
    let boot_attempts = count_boot_attempt(config, staging, upper);
    let state = boot_state(config, upper, boot_attempts);
    if let Err(e) = crate::state::write(Path::new(crate::state::STATE_PATH), &state) {
        log::warn!("`overlay-init status` will not know this boot: {e:#}");
    }
}

/// After the switch into the new root, with the upper at `/overlay`: remove
/// what a factory reset moved aside, in the background. Shared by both modes.
pub fn start_trash_cleanup(upper: &UpperKind) {
    if matches!(upper, UpperKind::Persistent(_)) {
        // After the switch, so the child holds nothing of the initramfs; the
        // trash is outside the overlay's view, so it cannot race the real init.
        if let Err(e) = crate::reset::start_trash_cleanup(Path::new("/overlay")) {
            log::warn!("reset: the old upper could not be scheduled for removal: {e:#}");
        }
    }
}

/// Count this boot on the persistent upper (now at `/overlay` in the new root),
/// durably, before the handover. Not on a tmpfs, not in failsafe, not with
/// `ovl.maxtries=0`. A counter that cannot be written is a warning.
fn count_boot_attempt(config: &Config, staging: &Staging, upper: &UpperKind) -> Option<u32> {
    if !matches!(upper, UpperKind::Persistent(_)) || config.maxtries == 0 {
        return None;
    }
    match crate::bootcount::increment(&staging.root().join("overlay")) {
        Ok(n) => {
            log::info!(
                "boot attempt {n} since the last `overlay-init mark-good` (failsafe after {})",
                config.maxtries
            );
            Some(n)
        }
        Err(e) => {
            log::warn!("boot counter not updated: {e:#}");
            None
        }
    }
}

/// What `overlay-init status` will report about this boot.
fn boot_state(
    config: &Config,
    upper: &UpperKind,
    boot_attempts: Option<u32>,
) -> crate::state::BootState {
    use crate::state::{BootState, Mode};
    let named_device = match &config.upper {
        UpperSpec::Device(d) => Some(d.to_string()),
        UpperSpec::Tmpfs => None,
    };
    let mut state = BootState {
        upper_device: named_device,
        upper: "tmpfs".into(),
        boot_attempts,
        maxtries: config.maxtries,
        ..Default::default()
    };
    match upper {
        UpperKind::Tmpfs => {}
        UpperKind::Persistent(dev) => state.upper = dev.display().to_string(),
        UpperKind::FallbackTmpfs { device, reason } => {
            state.upper_device = Some(device.display().to_string());
            state.tmpfs_fallback = Some(reason.clone());
        }
        UpperKind::Failsafe { device, reason } => {
            state.mode = Mode::Failsafe;
            state.failsafe_reason = Some(reason.to_string());
            if let Some(device) = device {
                state.upper_device = Some(device.display().to_string());
            }
        }
    }
    state
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
    let parallel = config.modules == cmdline::ModuleLoading::Parallel;
    let report = sys::modules::load_eager(index, parallel, ON_DEMAND_MODULES)?;
    for failed in report.failed() {
        log::warn!("module {}: {:?}", failed.name, failed.outcome);
    }
    log::debug!("{report:?}");
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
    timeline.step("extra lowers", || {
        let mut device_iter = devices.lowers.iter();
        for (n, spec) in config.lowers.iter().enumerate() {
            let target = staging.extra_lower(n);
            match spec {
                LowerSpec::Device(_) => {
                    let dev = device_iter.next().context("internal: lower device count")?;
                    mount_lower(dev, None, None, &target)?;
                }
                LowerSpec::File(path) => {
                    mount_image(&files_base, path, None, None, &target)?;
                }
            }
            lowers.push(target);
        }
        Ok(())
    })?;
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

/// What kind of upper the boot ended up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperKind {
    Tmpfs,
    Persistent(PathBuf),
    /// A tmpfs because the persistent upper could not be used.
    FallbackTmpfs {
        device: PathBuf,
        reason: String,
    },
    /// Failsafe: the changes go to a tmpfs; `device` (when it could be
    /// mounted) is read-only at `/overlay`.
    Failsafe {
        device: Option<PathBuf>,
        reason: failsafe::Reason,
    },
}

/// The tmpfs that holds a failsafe boot's changes (kept visible in the new
/// system under `/run/overlay-init`).
pub fn failsafe_upper_fs(staging: &Staging) -> PathBuf {
    staging.keep_dir.join("failsafe-upper")
}

/// The upper (with reset and fallbacks), the overlay mount, and the moves of the
/// layers into it. Shared by initramfs and router mode. `lower_dev` is the
/// main lower's device number (a reset refuses to run on it).
pub fn assemble_upper_and_overlay(
    config: &Config,
    staging: &Staging,
    lowers: &[PathBuf],
    lower_dev: u64,
    upper_device: Option<&Path>,
    early_failsafe: Option<failsafe::Reason>,
    timeline: &mut Timeline,
) -> std::result::Result<UpperKind, StepError> {
    let upper_fs = staging.upper_fs();
    let mut kind = timeline.step("upper", || {
        let Some(dev) = upper_device else {
            if let Some(reason) = early_failsafe {
                overlay::mount_tmpfs_upper(&upper_fs, config.size)?;
                announce_failsafe(reason, None);
                return Ok(UpperKind::Failsafe {
                    device: None,
                    reason,
                });
            }
            if config.reset {
                log::info!("ovl.reset: the upper is a tmpfs, which starts empty; nothing to reset");
            }
            overlay::mount_tmpfs_upper(&upper_fs, config.size)?;
            return Ok(UpperKind::Tmpfs);
        };
        match mount_persistent_upper(dev, config, &upper_fs, early_failsafe) {
            Ok(None) => Ok(UpperKind::Persistent(dev.to_path_buf())),
            Ok(Some(reason)) => {
                // The device stays read-only at upper_fs; the changes go to a tmpfs.
                overlay::mount_tmpfs_upper(&failsafe_upper_fs(staging), config.size)?;
                announce_failsafe(reason, Some(dev));
                Ok(UpperKind::Failsafe {
                    device: Some(dev.to_path_buf()),
                    reason,
                })
            }
            Err(why) => match early_failsafe {
                Some(reason) => {
                    warn_box(
                        "failsafe: the persistent upper cannot be mounted, even read-only",
                        &[
                            format!("device: {}", dev.display()),
                            format!("reason: {why:#}"),
                        ],
                    );
                    overlay::mount_tmpfs_upper(&upper_fs, config.size)?;
                    announce_failsafe(reason, None);
                    Ok(UpperKind::Failsafe {
                        device: None,
                        reason,
                    })
                }
                None => fall_back_to_tmpfs(config, &upper_fs, dev, &why),
            },
        }
    })?;
    if let UpperKind::Persistent(dev) = &kind {
        let dev = dev.clone();
        kind = timeline.step("reset", || {
            let flags = crate::reset::BootFlags {
                cmdline_reset: config.reset,
                failsafe: config.failsafe,
            };
            match crate::reset::apply_pending(&upper_fs, flags, Some(lower_dev)) {
                Ok(outcome) => {
                    log::debug!("reset: {outcome:?}");
                    Ok(UpperKind::Persistent(dev.clone()))
                }
                Err(why) => {
                    // A reset that did not finish left the old upper and the
                    // request in place: boot clean on a tmpfs, retry next boot.
                    sys::mount::umount(&upper_fs, false)?;
                    fall_back_to_tmpfs(
                        config,
                        &upper_fs,
                        &dev,
                        &why.context("factory reset failed"),
                    )
                }
            }
        })?;
    }
    let changes_fs = match &kind {
        UpperKind::Failsafe {
            device: Some(_), ..
        } => failsafe_upper_fs(staging),
        _ => upper_fs.clone(),
    };
    // A full upper (ENOSPC) or an overlay that is not writable: degrade, don't die.
    let (upper, work) = timeline.step("upper dirs", || {
        match (overlay::prepare_upper_dirs(&changes_fs), &kind) {
            (Ok(dirs), _) => Ok(dirs),
            (Err(why), UpperKind::Persistent(dev)) => {
                let dev = dev.clone();
                sys::mount::umount(&upper_fs, false)?;
                kind = fall_back_to_tmpfs(config, &upper_fs, &dev, &why)?;
                overlay::prepare_upper_dirs(&upper_fs)
            }
            (Err(why), _) => Err(why),
        }
    })?;
    timeline.step("overlay", || {
        let root = staging.root();
        match (overlay::mount_overlay(lowers, &upper, &work, &root), &kind) {
            (Ok(()), _) => Ok(()),
            (Err(why), UpperKind::Persistent(dev)) => {
                let dev = dev.clone();
                if sys::mount::is_mountpoint(&root) {
                    sys::mount::umount(&root, false)?;
                }
                sys::mount::umount(&upper_fs, false)?;
                kind = fall_back_to_tmpfs(config, &upper_fs, &dev, &why)?;
                let (upper, work) = overlay::prepare_upper_dirs(&upper_fs)?;
                overlay::mount_overlay(lowers, &upper, &work, &root)
            }
            (Err(why), _) => Err(why),
        }
    })?;
    Ok(kind)
}

/// A failsafe boot must not go unnoticed: a box on the console, and the log.
fn announce_failsafe(reason: failsafe::Reason, device: Option<&Path>) {
    let mut lines = vec![
        format!("reason: {reason}"),
        "changes go to a tmpfs and are lost at reboot; nothing was reset".into(),
    ];
    if let Some(dev) = device {
        lines.push(format!(
            "the persistent upper {} is read-only at /overlay",
            dev.display()
        ));
    }
    if matches!(reason, failsafe::Reason::BootLoop { .. }) {
        lines.push(
            "to boot normally again: mount -o remount,rw /overlay && overlay-init mark-good".into(),
        );
    }
    warn_box("FAILSAFE boot", &lines);
}

fn fall_back_to_tmpfs(
    config: &Config,
    upper_fs: &Path,
    dev: &Path,
    why: &anyhow::Error,
) -> Result<UpperKind> {
    warn_box(
        "persistent upper not used, booting on a tmpfs upper",
        &[
            format!("device: {}", dev.display()),
            format!("reason: {why:#}"),
            "the device was left as it was; changes in this boot are lost at reboot".into(),
        ],
    );
    overlay::mount_tmpfs_upper(upper_fs, config.size)?;
    Ok(UpperKind::FallbackTmpfs {
        device: dev.to_path_buf(),
        reason: format!("{why:#}"),
    })
}

/// Loop-mount the image file `path` (absolute, on the filesystem at `host`) read-only on `target`.
pub fn mount_image(
    host: &Path,
    path: &str,
    fstype: Option<FsType>,
    flags: Option<&str>,
    target: &Path,
) -> Result<u64> {
    let file = host.join(path.trim_start_matches('/'));
    if !Path::new("/dev/loop-control").exists() {
        let _ = sys::modules::load_on_demand("loop");
    }
    let loop_dev = sys::loopdev::attach_image(&file)?;
    let dev = mount_lower(loop_dev.path(), fstype, flags, target)
        .with_context(|| format!("image file {path}"))?;
    // The mount holds the device now; autoclear frees it when the mount goes.
    loop_dev.keep();
    Ok(dev)
}

/// Devices found for the command line's specs.
#[derive(Debug)]
pub struct FoundDevices {
    pub root: PathBuf,
    pub upper: Option<PathBuf>,
    pub lowers: Vec<PathBuf>,
}

/// The deadline for the device wait: `rootwait` is unbounded, `rootwait=N` and
/// `ovl.timeout=N` bound it (the shorter wins), else the default.
pub fn device_deadline(config: &Config) -> Option<Duration> {
    let secs = match (config.rootwait, config.timeout) {
        (RootWait::Forever, None) => return None,
        (RootWait::Forever, Some(t)) => t,
        (RootWait::Secs(s), Some(t)) => s.min(t),
        (RootWait::Secs(s), None) => s,
        (RootWait::Default, Some(t)) => t,
        (RootWait::Default, None) => DEFAULT_DEVICE_TIMEOUT,
    };
    Some(Duration::from_secs(secs.into()))
}

fn find_devices(
    config: &Config,
    root: &DeviceSpec,
    upper: Option<&DeviceSpec>,
    lowers: &[DeviceSpec],
) -> Result<FoundDevices> {
    let mut required: Vec<&DeviceSpec> = vec![root];
    required.extend(lowers.iter());
    let (mut paths, upper) = wait_for_devices(config, &required, upper)?;
    let lowers = paths.split_off(1);
    let root = paths.pop().context("internal: root device not resolved")?;
    Ok(FoundDevices {
        root,
        upper,
        lowers,
    })
}

/// The `ovl.lower=` device specs of the command line, in order.
pub fn lower_device_specs(config: &Config) -> Vec<&DeviceSpec> {
    config
        .lowers
        .iter()
        .filter_map(|l| match l {
            LowerSpec::Device(d) => Some(d),
            LowerSpec::File(_) => None,
        })
        .collect()
}

/// Wait for the `required` devices (in order; a missing one is an error after
/// the deadline) and the upper device (a missing one is a warning: the boot
/// goes on with a tmpfs upper). Shared by initramfs and router mode.
///
/// `/dev/NAME` specs whose node is already a live block device are taken as
/// they are, like the kernel's own `root=/dev/NAME`: only when something is
/// missing or named by LABEL/UUID/... does the uevent watcher start.
pub fn wait_for_devices(
    config: &Config,
    required: &[&DeviceSpec],
    upper: Option<&DeviceSpec>,
) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let present_now = |spec: &DeviceSpec| match spec {
        DeviceSpec::Path(p) if sys::blockdev::is_live_block_device(Path::new(p)) => {
            Some(PathBuf::from(p))
        }
        _ => None,
    };
    let fast: Option<Vec<PathBuf>> = required.iter().map(|s| present_now(s)).collect();
    let fast_upper = upper.map(present_now);
    if let (Some(found), None | Some(Some(_))) = (&fast, &fast_upper) {
        for (spec, path) in required.iter().zip(found) {
            log::debug!("{spec} is present: {}", path.display());
        }
        return Ok((found.clone(), fast_upper.flatten()));
    }
    let deadline = device_deadline(config).map(|d| Instant::now() + d);
    let mut waiter =
        sys::blockdev::DeviceWaiter::new().context("start watching for block devices")?;
    let found = if required.is_empty() {
        Vec::new()
    } else {
        waiter
            .wait_for(required, deadline, |_| {})?
            .into_iter()
            .map(|r| r.dev_path)
            .collect()
    };
    // A missing upper never blocks boot: it is waited for, then degraded to tmpfs.
    let upper = match upper {
        None => None,
        Some(spec) => match waiter.wait_for(&[spec], deadline, |_| {}) {
            Ok(mut r) => r.pop().map(|r| r.dev_path),
            Err(e) => {
                warn_box(
                    "persistent upper not found, booting on a tmpfs upper",
                    &[format!("ovl.upper={spec}"), format!("reason: {e:#}")],
                );
                None
            }
        },
    };
    Ok((found, upper))
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

/// Read the first bytes of a device and detect its filesystem.
pub fn detect_fstype(dev: &Path) -> Result<FsType> {
    let head = sys::io::read_head(dev, crate::probe::superblock::PROBE_BYTES)?;
    match crate::probe::superblock::detect(&head) {
        Ok(Some(info)) => info.fstype().ok_or_else(|| {
            anyhow!(
                "{} holds {:?}, which overlay-init cannot mount (accepted: squashfs, erofs, ext4)",
                dev.display(),
                info.kind
            )
        }),
        Ok(None) => bail!(
            "{} holds no filesystem overlay-init recognises (squashfs, erofs, ext4)",
            dev.display()
        ),
        Err(e) => bail!("{}: {e}", dev.display()),
    }
}

/// Mount a read-only lower; returns the mounted filesystem's device number.
pub fn mount_lower(
    dev: &Path,
    fstype: Option<FsType>,
    flags: Option<&str>,
    target: &Path,
) -> Result<u64> {
    let fstype = match fstype {
        Some(t) => t,
        None => detect_fstype(dev)?,
    };
    log::info!(
        "lower: {} ({fstype}) read-only on {}",
        dev.display(),
        target.display()
    );
    overlay::mount_lower(dev, fstype, flags, target)?;
    sys::mount::dev_of(target)
}

/// Mount the persistent upper read-only, look at it, and make it writable only
/// when it will be used: `Ok(Some(reason))` is a failsafe boot (the device stays
/// read-only at `target`), `Ok(None)` a normal one (read-write at `target`).
/// On `Err` nothing is mounted and nothing was written.
fn mount_persistent_upper(
    dev: &Path,
    config: &Config,
    target: &Path,
    early_failsafe: Option<failsafe::Reason>,
) -> Result<Option<failsafe::Reason>> {
    let fstype = config.upperfstype;
    let detected = detect_fstype(dev).with_context(|| format!("probe upper {}", dev.display()))?;
    if let Some(want) = fstype {
        if want != detected {
            bail!(
                "ovl.upperfstype={want} but {} holds {detected}",
                dev.display()
            );
        }
    }
    if !detected.can_be_upper() {
        bail!(
            "{} holds {detected}, which is read-only and cannot hold an upper",
            dev.display()
        );
    }
    sys::modules::ensure_filesystem(detected.kernel_name());
    mount_fs(
        &dev.to_string_lossy(),
        target,
        detected.kernel_name(),
        MountFlags::RDONLY | MountFlags::NODEV,
        "",
    )?;
    if early_failsafe.is_some() {
        log::info!("upper: {} ({detected}) read-only (failsafe)", dev.display());
        return Ok(early_failsafe);
    }
    let checked = (|| {
        let attempts = crate::bootcount::read(target)?;
        if let Some(reason) = failsafe::boot_loop_reason(attempts, config.maxtries) {
            return Ok(Some(reason));
        }
        // A reset about to run frees the space: it is no reason to fall back.
        let reset_coming = config.reset || crate::reset::status(target)?.reset_pending;
        if let Some(full) = sys::upperfs::free_space(target)?.full_reason() {
            if !reset_coming {
                bail!("{}: {full}", dev.display());
            }
        }
        sys::upperfs::remount_read_write(target, dev)?;
        Ok(None)
    })();
    match checked {
        Ok(None) => {
            log::info!("upper: {} ({detected})", dev.display());
            Ok(None)
        }
        Ok(Some(reason)) => {
            log::info!("upper: {} ({detected}) read-only (failsafe)", dev.display());
            Ok(Some(reason))
        }
        Err(e) => {
            let _ = sys::mount::umount(target, false);
            Err(e)
        }
    }
}

/// A warning that must not be missed: boxed on the console and logged.
pub fn warn_box(title: &str, lines: &[String]) {
    log::warn!("{title}: {}", lines.join("; "));
    eprint!(
        "{}",
        crate::fail::boxed(&format!("WARNING: {title}"), lines)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rules() {
        let mut c = Config::default();
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(30)));
        c.rootwait = RootWait::Forever;
        assert_eq!(device_deadline(&c), None);
        c.timeout = Some(5);
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(5)));
        c.rootwait = RootWait::Secs(3);
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(3)));
        c.rootwait = RootWait::Default;
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(5)));
    }

    #[test]
    fn timeline_names_the_failing_step() {
        let mut t = Timeline::default();
        t.step("one", || Ok(())).unwrap();
        let err = t
            .step("two", || -> Result<()> { bail!("boom") })
            .unwrap_err();
        assert_eq!(err.step, "two");
        assert_eq!(t.steps.len(), 2);
        assert!(t.summary().starts_with("one="));
    }
}
