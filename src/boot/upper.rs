//! The upper: a tmpfs or a persistent device, with the factory reset, the
//! failsafe, and the fallbacks that keep a bad upper from blocking the boot;
//! then the overlay mount. Shared by initramfs and router mode.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::mount::MountFlags;

use crate::boot::failure::warn_box;
use crate::cmdline::{Config, UpperSpec};
use crate::failsafe;
use crate::lower::detect_fstype;
use crate::overlay::{self, Staging};
use crate::sys;
use crate::sys::mount::mount_fs;

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
    staging.keep_dir.join(crate::layout::FAILSAFE_UPPER)
}

/// The "upper" step: a tmpfs, or the persistent `device` (read-only first,
/// see [`mount_persistent_upper`]), at `staging.upper_fs()`; in failsafe the
/// changes go to a tmpfs. A device that cannot be used degrades to a tmpfs.
pub fn mount_upper(
    config: &Config,
    staging: &Staging,
    device: Option<&Path>,
    early_failsafe: Option<failsafe::Reason>,
) -> Result<UpperKind> {
    let upper_fs = staging.upper_fs();
    let Some(dev) = device else {
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
    if early_failsafe.is_none() {
        // First boot: a blank device is formatted (failsafe writes nothing).
        if let Err(why) = crate::boot::firstboot::format_blank_upper(config, staging, dev) {
            return degrade_to_tmpfs(config, staging, dev, &why, false);
        }
    }
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
            None => degrade_to_tmpfs(config, staging, dev, &why, false),
        },
    }
}

/// The "reset" step, on a persistent upper only: apply a pending factory
/// reset (`lower_dev` is the main lower's device: a reset refuses to run on
/// it). A reset that did not finish left the old upper and the request in
/// place: boot clean on a tmpfs, retry next boot.
pub fn apply_reset(
    config: &Config,
    staging: &Staging,
    dev: &Path,
    lower_dev: u64,
) -> Result<UpperKind> {
    let flags = crate::reset::BootFlags {
        cmdline_reset: config.reset,
        failsafe: config.failsafe,
    };
    match crate::reset::apply_pending(&staging.upper_fs(), flags, Some(lower_dev)) {
        Ok(outcome) => {
            log::debug!("reset: {outcome:?}");
            Ok(UpperKind::Persistent(dev.to_path_buf()))
        }
        Err(why) => degrade_to_tmpfs(
            config,
            staging,
            dev,
            &why.context("factory reset failed"),
            true,
        ),
    }
}

/// The "upper dirs" step: `upper/` and `work/` where the changes go. A full
/// persistent upper (ENOSPC) or one that is not writable degrades to a tmpfs.
pub fn prepare_upper_dirs(
    config: &Config,
    staging: &Staging,
    kind: &mut UpperKind,
) -> Result<(PathBuf, PathBuf)> {
    let changes_fs = match kind {
        UpperKind::Failsafe {
            device: Some(_), ..
        } => failsafe_upper_fs(staging),
        _ => staging.upper_fs(),
    };
    let attempt = || overlay::prepare_upper_dirs(&changes_fs);
    let result = match &*kind {
        // A full upper: remove what is safe to remove and try again.
        UpperKind::Persistent(dev) => {
            crate::boot::fullupper::with_room(&changes_fs, dev, attempt, || Ok(()))
        }
        _ => attempt(),
    };
    match (result, &*kind) {
        (Ok(dirs), _) => Ok(dirs),
        (Err(why), UpperKind::Persistent(dev)) => {
            *kind = degrade_to_tmpfs(config, staging, &dev.clone(), &why, true)?;
            overlay::prepare_upper_dirs(&staging.upper_fs())
        }
        (Err(why), _) => Err(why),
    }
}

/// The "overlay" step: mount the overlay of `lowers` and the upper at
/// `staging.root()`. An overlay that will not mount (or is not writable) on a
/// persistent upper degrades to a tmpfs upper.
pub fn mount_overlay(
    config: &Config,
    staging: &Staging,
    lowers: &[PathBuf],
    (upper, work): (PathBuf, PathBuf),
    kind: &mut UpperKind,
) -> Result<()> {
    let root = staging.root();
    let attempt = || {
        overlay::prepare_upper_dirs(&staging.upper_fs())?;
        overlay::mount_overlay(lowers, &upper, &work, &root)
    };
    let unmount_root = || match sys::mount::is_mountpoint(&root) {
        true => sys::mount::umount(&root, false),
        false => Ok(()),
    };
    let result = match &*kind {
        // A full upper: remove what is safe to remove and try again.
        UpperKind::Persistent(dev) => {
            crate::boot::fullupper::with_room(&staging.upper_fs(), dev, attempt, unmount_root)
        }
        _ => overlay::mount_overlay(lowers, &upper, &work, &root),
    };
    match (result, &*kind) {
        (Ok(()), _) => Ok(()),
        (Err(why), UpperKind::Persistent(dev)) => {
            if sys::mount::is_mountpoint(&root) {
                sys::mount::umount(&root, false)?;
            }
            *kind = degrade_to_tmpfs(config, staging, &dev.clone(), &why, true)?;
            let (upper, work) = overlay::prepare_upper_dirs(&staging.upper_fs())?;
            overlay::mount_overlay(lowers, &upper, &work, &root)
        }
        (Err(why), _) => Err(why),
    }
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

/// The one fallback: the persistent upper `dev` is given up (unmounted from
/// `staging.upper_fs()` when `mounted`), a warning box says why, and a tmpfs
/// takes its place. The device is left as it was.
fn degrade_to_tmpfs(
    config: &Config,
    staging: &Staging,
    dev: &Path,
    why: &anyhow::Error,
    mounted: bool,
) -> Result<UpperKind> {
    let upper_fs = staging.upper_fs();
    if mounted {
        sys::mount::umount(&upper_fs, false)?;
    }
    warn_box(
        "persistent upper not used, booting on a tmpfs upper",
        &[
            format!("device: {}", dev.display()),
            format!("reason: {why:#}"),
            "the device was left as it was; changes in this boot are lost at reboot".into(),
        ],
    );
    overlay::mount_tmpfs_upper(&upper_fs, config.size)?;
    Ok(UpperKind::FallbackTmpfs {
        device: dev.to_path_buf(),
        reason: format!("{why:#}"),
    })
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
        if let Err(e) = crate::reset::start_trash_cleanup(Path::new(crate::layout::OVERLAY)) {
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
    match crate::bootcount::increment(&staging.root().join(crate::layout::OVERLAY_NAME)) {
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
