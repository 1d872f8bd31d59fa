//! The upper: a tmpfs or a persistent device, with the factory reset, the
//! failsafe, and the fallbacks that keep a bad upper from blocking the boot;
//! then the overlay mount. Shared by initramfs and router mode.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::mount::MountFlags;

use crate::boot::failure::warn_box;
use crate::cmdline::{Config, UpperSpec};
use crate::failsafe;
use crate::fstype::FsType;
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
    if let UpperSpec::Flash(spec) = &config.upper {
        return crate::boot::flash::mount_flash_upper(config, staging, spec, early_failsafe);
    }
    let Some(dev) = device else {
        return tmpfs_upper(config, staging, early_failsafe);
    };
    // First boot: a blank device is formatted (failsafe writes nothing).
    let probed = match early_failsafe {
        Some(_) => None,
        None => match crate::boot::firstboot::format_blank_upper(config, staging, dev) {
            Ok(fstype) => fstype,
            Err(why) => return degrade_to_tmpfs(config, staging, dev, &why, false),
        },
    };
    let mounted = mount_persistent_upper(dev, probed, config, &upper_fs, early_failsafe);
    settle_persistent_upper(config, staging, dev, mounted, early_failsafe)
}

/// The upper is a tmpfs (none named, or the named one is missing).
pub(crate) fn tmpfs_upper(
    config: &Config,
    staging: &Staging,
    early_failsafe: Option<failsafe::Reason>,
) -> Result<UpperKind> {
    let upper_fs = staging.upper_fs();
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
    Ok(UpperKind::Tmpfs)
}

/// What the boot makes of [`mount_checked`]'s result for the persistent upper
/// `dev`: persistent, failsafe (read-only, changes on a tmpfs), or a tmpfs
/// fallback with a box saying why.
pub(crate) fn settle_persistent_upper(
    config: &Config,
    staging: &Staging,
    dev: &Path,
    mounted: Result<Option<failsafe::Reason>>,
    early_failsafe: Option<failsafe::Reason>,
) -> Result<UpperKind> {
    let upper_fs = staging.upper_fs();
    match mounted {
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
/// reset, carrying the keep-list of the merged view of `lowers` and the upper
/// (`lower_dev` is the main lower's device: a reset refuses to run on it). A reset that did not finish left the old upper and the request in
/// place: boot clean on a tmpfs, retry next boot.
pub fn apply_reset(
    config: &Config,
    staging: &Staging,
    dev: &Path,
    lower_dev: u64,
    lowers: &[PathBuf],
) -> Result<UpperKind> {
    let flags = crate::reset::BootFlags {
        cmdline_reset: config.reset,
        failsafe: config.failsafe,
    };
    match super::upgrade::apply_reset(&staging.upper_fs(), flags, lower_dev, lowers) {
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
/// persistent upper (ENOSPC) or one where they cannot be made degrades to a tmpfs.
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
    // A `work` that is no directory holds no change: it is recreated before
    // the upper is given up.
    let result = match (result, &*kind) {
        (Err(why), UpperKind::Persistent(_)) => retry_with_fresh_work(&changes_fs, why, attempt),
        (result, _) => result,
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
/// `staging.root()`. An overlay that will not mount (or mounts read-only) on a
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
            // work/ holds only what overlayfs left mid-operation: empty it
            // (frees space on a full upper, clears a stuck entry) and try once more.
            log::warn!(
                "overlay on {} failed: {why:#}; recreating work/ and retrying",
                dev.display()
            );
            match recreate_work(&work)
                .and_then(|()| overlay::mount_overlay(lowers, &upper, &work, &root))
            {
                Ok(()) => return Ok(()),
                Err(again) => {
                    log::warn!("overlay on {} failed again: {again:#}", dev.display());
                    if sys::mount::is_mountpoint(&root) {
                        sys::mount::umount(&root, false)?;
                    }
                }
            }
            *kind = degrade_to_tmpfs(config, staging, &dev.clone(), &why, true)?;
            let (upper, work) = overlay::prepare_upper_dirs(&staging.upper_fs())?;
            overlay::mount_overlay(lowers, &upper, &work, &root)
        }
        (Err(why), _) => Err(why),
    }
}

/// `upper/`/`work/` could not be made (`why`): when `work` is not a directory
/// (a file, a symlink), move it into the trash and run `attempt` again.
fn retry_with_fresh_work(
    upper_fs: &Path,
    why: anyhow::Error,
    attempt: impl FnOnce() -> Result<(PathBuf, PathBuf)>,
) -> Result<(PathBuf, PathBuf)> {
    match crate::staterepair::move_aside_odd_work(upper_fs) {
        Ok(None) => Err(why),
        Ok(Some(line)) => {
            log::warn!("{why:#}: {line}; recreating it");
            attempt()
        }
        Err(e) => {
            log::warn!("{why:#}; moving work/ aside failed: {e:#}");
            Err(why)
        }
    }
}

/// Empty the overlay's `work/` (never following a symlink, never crossing a mount).
fn recreate_work(work: &Path) -> Result<()> {
    let fd = sys::dirfd::open_dir(work)?;
    let report = sys::wipe::wipe_contents(std::os::fd::AsFd::as_fd(&fd), work)?;
    if !report.is_complete() {
        bail!(
            "{} could not be emptied: {:?}",
            work.display(),
            report.failures
        );
    }
    Ok(())
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
/// On `Err` nothing is mounted and nothing was written. `probed` is the
/// filesystem the first-boot check already read from the superblock, if any.
fn mount_persistent_upper(
    dev: &Path,
    probed: Option<FsType>,
    config: &Config,
    target: &Path,
    early_failsafe: Option<failsafe::Reason>,
) -> Result<Option<failsafe::Reason>> {
    let fstype = config.upperfstype;
    let detected = match probed {
        Some(detected) => detected,
        None => detect_fstype(dev).with_context(|| format!("probe upper {}", dev.display()))?,
    };
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
    let source = dev.to_string_lossy();
    mount_checked(
        &source,
        dev,
        detected.kernel_name(),
        config,
        target,
        early_failsafe,
    )
}

/// Mount `source` (a `fstype` filesystem, shown as `dev`) read-only at
/// `target`, look at it, and make it writable only when it will be used; see
/// [`mount_persistent_upper`].
pub(crate) fn mount_checked(
    source: &str,
    dev: &Path,
    detected: &str,
    config: &Config,
    target: &Path,
    early_failsafe: Option<failsafe::Reason>,
) -> Result<Option<failsafe::Reason>> {
    mount_fs(
        source,
        target,
        detected,
        MountFlags::RDONLY | MountFlags::NODEV,
        "",
    )?;
    if early_failsafe.is_some() {
        log::info!("upper: {} ({detected}) read-only (failsafe)", dev.display());
        return Ok(early_failsafe);
    }
    let checked = (|| {
        let attempts = crate::bootcount::read(target)?;
        // An explicit factory reset (`ovl.reset`, or a pending `overlay-init
        // reset`) is the remedy for a broken configuration: it beats the
        // boot-loop failsafe, and clears the counter. (`ovl.failsafe` never
        // gets here: it never resets.)
        let reset_coming = config.reset || reset_pending(target);
        let mut clear_counter = false;
        if let Some(reason) = failsafe::boot_loop_reason(attempts, config.maxtries) {
            if !reset_coming {
                return Ok(Some(reason));
            }
            log::warn!(
                "{reason}, but a factory reset is asked for: it is applied, the counter cleared"
            );
            clear_counter = true;
        }
        // "Full" is no reason to give the upper up (a remote router would boot
        // in factory state): only an overlay that will not mount, or a work/
        // that cannot be made, falls back. Judged as root (its reserve counts).
        let space = sys::upperfs::free_space(target)?;
        if let Some(full) = space.full_reason() {
            if !reset_coming {
                log::warn!(
                    "upper {}: {full}; used anyway (the overlay mount decides)",
                    dev.display()
                );
            }
        } else if space.in_reserve() {
            log::warn!(
                "upper {}: low on space: {} KiB free for root, {} KiB for other users; \
                 used anyway, free some space",
                dev.display(),
                space.bytes / 1024,
                space.bytes_unreserved / 1024
            );
        }
        sys::upperfs::remount_read_write(target, dev)?;
        if clear_counter {
            crate::bootcount::clear(target).context("clear the boot-attempt counter")?;
        }
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

/// Is a factory reset pending on the upper at `target`? Odd state (a
/// `reset-request` that is not a regular file) is not a request: the "record
/// boot" step moves it aside.
fn reset_pending(target: &Path) -> bool {
    match crate::reset::status(target) {
        Ok(status) => status.reset_pending,
        Err(e) => {
            log::warn!("reset request not readable, taken as none: {e:#}");
            false
        }
    }
}

/// The "record boot" step, right after the "upper" step: repair
/// `.overlay-init/` (see [`crate::staterepair`]) and count the boot attempt on
/// the persistent upper, before anything else uses it. An upper that then
/// breaks a later step (a whited-out init, a file named `rom`) still counts
/// towards `ovl.maxtries`, so a boot loop ends in failsafe. Failures are warnings.
pub fn record_boot(config: &Config, staging: &Staging, upper: &UpperKind) -> Option<u32> {
    if !matches!(upper, UpperKind::Persistent(_)) {
        return None;
    }
    crate::staterepair::repair_logged(&staging.upper_fs());
    count_boot_attempt(config, &staging.upper_fs())
}

/// The "boot state" step, before the handover: the state file for
/// `overlay-init status`, with the count [`record_boot`] made.
pub fn write_boot_state(config: &Config, upper: &UpperKind, boot_attempts: Option<u32>) {
    // A later step may have given the persistent upper up: the count stands
    // (it is on the device), the state says what this boot uses.
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

/// Count this boot on the persistent upper at `upper_fs`, durably. Not on a
/// tmpfs, not in failsafe, not with `ovl.maxtries=0`. A counter that cannot be
/// written is a warning.
fn count_boot_attempt(config: &Config, upper_fs: &Path) -> Option<u32> {
    if config.maxtries == 0 {
        return None;
    }
    match crate::bootcount::increment(upper_fs) {
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
        UpperSpec::File(path) => Some(path.clone()),
        UpperSpec::Flash(spec) => Some(spec.to_string()),
        UpperSpec::Tmpfs => None,
    };
    let mut state = BootState {
        upper_device: named_device,
        upper: "tmpfs".into(),
        boot_attempts,
        maxtries: config.maxtries,
        verity: config.verity.as_ref().map(|v| v.root_hash.to_string()),
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
