//! PID 1: the boot, as one list of named, timed steps for both root modes.
//!
//! [`run_pid1`] sets up logging and reads the command line; [`sequence`] is
//! the boot proper, top to bottom. What differs between an initramfs and a
//! root the kernel mounted itself comes from one [`RootMode`] value (see
//! [`initramfs`] and [`kernel_root`]); every step has the same name in both
//! modes, and every error carries its step's name to the failure handler.

pub mod failure;
pub mod firstboot;
pub mod flash;
pub mod fullupper;
pub mod initramfs;
pub mod kernel_root;
pub mod live;
pub mod steps;
pub mod upgrade;
pub mod upper;
pub mod verity;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use crate::cmdline::Config;
use crate::lower;
use crate::overlay::Staging;
use crate::sys;
use crate::timeline::{StepError, Timeline};
use upper::UpperKind;

pub use steps::{log_handover, API_MOUNTS, TEST_PANIC_ENV};

/// What `/` is when PID 1 starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootMode {
    /// `/` is an initramfs: find and mount the lower, move the API mounts
    /// into the new root, free the initramfs, switch_root.
    Initramfs,
    /// `/` is a root the kernel mounted (router mode, `init=`): it is the
    /// lower; the overlay is staged on a small tmpfs, then pivot_root.
    KernelRoot,
}

/// The boot's entry point as PID 1, in either mode. Never returns.
pub fn run_pid1(mode: RootMode) -> ! {
    let started = Instant::now();
    crate::logger::init_pid1(false);
    failure::install_panic_hook(None);
    let mut t = Timeline::default();
    let early_fatal = |e: StepError| -> ! { failure::fatal(e.step, &e.error, None) };
    t.step("api mounts", || mode.mount_api_filesystems())
        .unwrap_or_else(|e| early_fatal(e));
    let (kmsg_ratelimit, uptime) = t
        .step("log setup", steps::setup_log)
        .unwrap_or_else(|e| early_fatal(e));
    let config = t
        .step("command line", || Ok(steps::load_config()))
        .unwrap_or_else(|e| early_fatal(e));
    steps::test_panic_seam();
    mode.log_start(&config, uptime);

    let argv0 = std::env::args().next().unwrap_or_default();
    let booted = sequence(mode, &config, &argv0, &mut t)
        .unwrap_or_else(|e| failure::fatal(e.step, &e.error, config.onfail));

    // In the new root: hand over to the real init.
    steps::reopen_console();
    // The logger's /dev/kmsg stays open and valid across the switch (devtmpfs moved with it).
    log_handover(&booted.init, started, &t, &booted.notes);
    upper::start_trash_cleanup(&booted.upper);
    sys::kmsg::restore_ratelimit(kmsg_ratelimit);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let error = sys::switch::exec_init(&booted.init, &args);
    failure::fatal("exec init", &error, config.onfail)
}

/// What the boot ends with: `/` is the new root, its init checked.
#[derive(Debug)]
pub struct Booted {
    /// The real init, to exec.
    pub init: String,
    pub upper: UpperKind,
    /// Where the layers were assembled (before the switch).
    pub staging: Staging,
    /// For the handover line: what the switch left behind.
    pub notes: String,
}

/// The boot from a checked command line to the switch into the new root.
/// `argv0` is the path the kernel started PID 1 by.
pub fn sequence(
    mode: RootMode,
    config: &Config,
    argv0: &str,
    t: &mut Timeline,
) -> Result<Booted, StepError> {
    let init = mode
        .check_config(config, argv0)
        .map_err(|error| StepError {
            step: "command line",
            error,
        })?;
    let key = t.step("failsafe window", || Ok(steps::failsafe_key_window(config)))?;
    let early_failsafe = crate::failsafe::early_reason(config, key);
    t.step("modules", || steps::load_modules(config))?;
    if let Some(delay) = mode.rootdelay(config) {
        t.step("rootdelay", || steps::root_delay(delay))?;
    }
    let devices = t.step("device wait", || mode.find_devices(config))?;
    let staging = t.step("staging", || mode.prepare_staging())?;
    let main = t.step("lower", || mode.mount_lower(config, &devices, &staging))?;
    let mut lowers = vec![main.path.clone()];
    lowers.extend(t.step("extra lowers", || {
        lower::mount_extra_lowers(config, &devices.lowers, &main.files_base, &staging)
    })?);
    let upper_file = t.step("upper file", || {
        let root = devices.root.as_deref();
        live::attach_upper_file(config, &staging, root, early_failsafe.is_some())
    })?;
    let device = devices.upper.as_deref();
    let device = device.or(upper_file.as_ref().map(|file| file.path()));
    let mut upper = t.step("upper", || {
        upper::mount_upper(config, &staging, device, early_failsafe)
    })?;
    // Mounted, the loop device stays (autoclear); unused, it is detached.
    drop(upper_file);
    // Counted as soon as the upper is read-write, before anything uses it: an
    // upper that breaks a later step still counts towards `ovl.maxtries`.
    let attempts = t.step("record boot", || {
        Ok(upper::record_boot(config, &staging, &upper))
    })?;
    if let UpperKind::Persistent(_) = &upper {
        t.step("upgrade", || {
            upgrade::check_lowers(config, &staging, &lowers)
        })?;
    }
    if let UpperKind::Persistent(dev) = &upper {
        upper = t.step("reset", || {
            upper::apply_reset(config, &staging, dev, main.dev, &lowers)
        })?;
    }
    let dirs = t.step("upper dirs", || {
        upper::prepare_upper_dirs(config, &staging, &mut upper)
    })?;
    t.step("overlay", || {
        upper::mount_overlay(config, &staging, &lowers, dirs, &mut upper)
    })?;
    t.step("move layers", || mode.move_layers(&staging))?;
    t.step("check init", || {
        let file = sys::switch::check_init(&staging.root(), &init)?;
        verity::check_init(config, file, &init)
    })?;
    t.step("boot state", || {
        upper::write_boot_state(config, &upper, attempts);
        verity::arm_on_error(config, &upper);
        Ok(())
    })?;
    t.step("move api mounts", || mode.move_api_mounts(&staging))?;
    // The initramfs is freed only after the switch, through a descriptor
    // opened before it (systemd's order): a failed switch keeps the rescue shell.
    let old_root = t.step("switch root", || mode.switch_root(&staging))?;
    let notes = match old_root {
        Some(fd) => initramfs::freed_note(t.step("free initramfs", || {
            sys::switch::free_old_root(std::os::fd::AsFd::as_fd(&fd))
        })?),
        None => "router mode".to_string(),
    };
    Ok(Booted {
        init,
        upper,
        staging,
        notes,
    })
}

/// The devices the command line names, found.
#[derive(Debug, Default)]
pub struct Devices {
    /// `root=` (initramfs mode; a kernel-mounted root is already mounted).
    pub root: Option<PathBuf>,
    /// The persistent upper; `None` is a tmpfs upper (or one not found).
    pub upper: Option<PathBuf>,
    /// The `ovl.lower=` devices, in order.
    pub lowers: Vec<PathBuf>,
    /// The `ovl.verity_hash=` device.
    pub verity_hash: Option<PathBuf>,
}

/// The main lower, mounted.
#[derive(Debug)]
pub struct MainLower {
    /// Its mount point: the overlay's topmost lower.
    pub path: PathBuf,
    /// Its device number: a factory reset refuses to run on it.
    pub dev: u64,
    /// Where image files named in `ovl.lower=` are looked up (the `root=` filesystem).
    pub files_base: PathBuf,
}

/// Each step's mode-specific part.
impl RootMode {
    /// Judged by the filesystem type of `/`: needs nothing mounted.
    pub fn detect() -> RootMode {
        if kernel_root::is_kernel_root() {
            RootMode::KernelRoot
        } else {
            RootMode::Initramfs
        }
    }

    pub fn mount_api_filesystems(self) -> Result<()> {
        match self {
            RootMode::Initramfs => initramfs::mount_api_filesystems(),
            RootMode::KernelRoot => kernel_root::mount_api_filesystems(),
        }
    }

    fn log_start(self, config: &Config, uptime: Option<std::time::Duration>) {
        match self {
            RootMode::Initramfs => initramfs::log_start(config, uptime),
            RootMode::KernelRoot => kernel_root::log_start(config, uptime),
        }
    }

    /// What the mode needs of the command line; returns the real init's
    /// path in the new root.
    pub fn check_config(self, config: &Config, argv0: &str) -> Result<String> {
        match self {
            RootMode::Initramfs => initramfs::check_config(config),
            RootMode::KernelRoot => kernel_root::check_config(config, argv0),
        }
    }

    /// `rootdelay=`: the kernel itself waits before it mounts a root.
    fn rootdelay(self, config: &Config) -> Option<u32> {
        match self {
            RootMode::Initramfs => config.rootdelay,
            RootMode::KernelRoot => None,
        }
    }

    pub fn find_devices(self, config: &Config) -> Result<Devices> {
        match self {
            RootMode::Initramfs => initramfs::find_devices(config),
            RootMode::KernelRoot => kernel_root::find_devices(config),
        }
    }

    pub fn prepare_staging(self) -> Result<Staging> {
        match self {
            RootMode::Initramfs => Ok(initramfs::staging()),
            RootMode::KernelRoot => crate::mounted_root::prepare_staging(),
        }
    }

    pub fn mount_lower(
        self,
        config: &Config,
        devices: &Devices,
        staging: &Staging,
    ) -> Result<MainLower> {
        match self {
            RootMode::Initramfs => initramfs::mount_lower(config, devices, staging),
            RootMode::KernelRoot => kernel_root::mount_lower(),
        }
    }

    pub fn move_layers(self, staging: &Staging) -> Result<()> {
        match self {
            RootMode::Initramfs => crate::overlay::move_layers_into_root(staging),
            RootMode::KernelRoot => crate::mounted_root::move_upper_into_root(staging),
        }
    }

    pub fn move_api_mounts(self, staging: &Staging) -> Result<()> {
        match self {
            RootMode::Initramfs => initramfs::move_api_mounts(staging),
            RootMode::KernelRoot => kernel_root::move_api_mounts(staging),
        }
    }

    /// Returns the old root (the initramfs), still to be freed, if any.
    pub fn switch_root(self, staging: &Staging) -> Result<Option<std::os::fd::OwnedFd>> {
        match self {
            RootMode::Initramfs => {
                let old_root = sys::switch::open_old_root()?;
                sys::switch::enter_new_root(&staging.root())?;
                Ok(Some(old_root))
            }
            RootMode::KernelRoot => {
                crate::mounted_root::pivot_into_new_root(staging).map(|()| None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The README's "What it does" list names the steps of this file, in order.
    #[test]
    fn readme_lists_the_boot_steps_in_order() {
        let code = include_str!("mod.rs");
        let code = &code[..code.find("#[cfg(test)]").unwrap()];
        let mut steps: Vec<&str> = code
            .split(".step(\"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        steps.push("exec init");
        let readme = include_str!("../../README.md");
        let listed: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.contains("the steps of src/boot/mod.rs"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .filter_map(|l| {
                let (number, rest) = l.trim_start().split_once(". ")?;
                number.parse::<u32>().ok()?;
                Some(rest.split("  ").next()?.trim())
            })
            .collect();
        assert_eq!(listed, steps);
    }

    /// systemd's switch-root order: the initramfs is freed after the switch,
    /// so a switch that fails still has the rescue shell.
    #[test]
    fn the_initramfs_is_freed_after_the_switch() {
        let code = include_str!("mod.rs");
        let code = &code[..code.find("#[cfg(test)]").unwrap()];
        let switch = code.find(".step(\"switch root\"").unwrap();
        let free = code.find(".step(\"free initramfs\"").unwrap();
        assert!(switch < free);
    }
}
