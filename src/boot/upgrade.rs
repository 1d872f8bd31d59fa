//! Firmware upgrades in the boot (issue 13): the "upgrade" step compares the
//! lowers' identity with the one recorded on the persistent upper and applies
//! `ovl.upgrade=keep|prune|reset`; the "reset" step's keep-list (every reset
//! carries `/etc/overlay-init/keep`, read from the merged view). The pure
//! rules live in `crate::upgrade`; see docs/upgrades.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::boot::failure::warn_box;
use crate::cmdline::Config;
use crate::layout;
use crate::overlay::Staging;
use crate::reset::{self, BootFlags, Request, ResetOutcome, Step, MAX_CARRY_FAILURES};
use crate::state::UpgradeState;
use crate::sys::{self, carry::LinkMode, dirfd, upgrade_scan};
use crate::upgrade::identity::{self, IdentityRecord, LowerChange};
use crate::upgrade::keep::{self, KeepList};
use crate::upgrade::{self as up, Action, BootContext, LowerState, Notice, Policy};

/// The "upgrade" step, on a persistent upper that is mounted read-write,
/// before the pending reset and the overlay. Never fails the boot: a lower
/// whose identity cannot be computed (not on a block device, an unknown
/// format) is a warning, and nothing is recorded.
pub fn check_lowers(config: &Config, staging: &Staging, lowers: &[PathBuf]) -> Result<()> {
    let mut state = UpgradeState::default();
    if let Err(e) = check(config, &staging.upper_fs(), lowers, &mut state) {
        log::warn!("upgrade: {e:#}; the upper is used as it is, no identity recorded");
    }
    if let Err(e) = crate::state::write_upgrade(Path::new(layout::UPGRADE_STATE_FILE), &state) {
        log::warn!("upgrade: `overlay-init status` will not show the lower: {e:#}");
    }
    Ok(())
}

fn check(
    config: &Config,
    upper_fs: &Path,
    lowers: &[PathBuf],
    state: &mut UpgradeState,
) -> Result<()> {
    let (now, took) = identify_all(lowers)?;
    state.lower_identity = Some(now.main.describe());
    state.lower_version = Some(now.main.version.describe());
    read_last_upgrade(upper_fs, state);
    let change = identity::compare(&up::read_record(upper_fs)?, &now);
    let pending = reset::pending_request(upper_fs)?.is_some();
    let ctx = BootContext {
        failsafe: config.failsafe,
        reset_anyway: config.reset || pending,
    };
    let plan = up::decide(LowerState::from(&change), config.upgrade, ctx);
    let policy = config.upgrade;
    let result = match (&change, plan.action) {
        (LowerChange::Unchanged, _) => {
            log::debug!(
                "upgrade: lower unchanged ({}; identity of {} layer(s) in {took:?})",
                now.main.describe(),
                lowers.len()
            );
            None
        }
        (LowerChange::FirstBoot, _) => {
            log::info!(
                "upgrade: first boot on this upper: lower identity recorded ({})",
                now.main.describe()
            );
            None
        }
        (LowerChange::Unknown(why), _) => {
            log::warn!(
                "upgrade: the recorded lower identity is unreadable ({why}); this boot's is \
                 recorded, nothing else changed"
            );
            None
        }
        (LowerChange::Changed { layers, old }, action) => {
            Some(apply(upper_fs, lowers, policy, action, old, &now, layers)?)
        }
    };
    debug_assert!(plan.notice != Notice::Debug || result.is_none());
    if !plan.record {
        return Ok(());
    }
    if let (Some(result), LowerChange::Changed { layers, old }) = (result, &change) {
        state.last_upgrade = Some(up::describe_change(old, &now, layers));
        state.upgrade_policy = Some(policy.name().to_string());
        state.upgrade_result = Some(result);
        state.this_boot = true;
        write_last_upgrade(upper_fs, state)?;
    }
    up::write_record(upper_fs, &now)
}

/// Carry out `action` for a changed lower; returns what it did, in a few
/// words. Everything it changed is durable when it returns.
fn apply(
    upper_fs: &Path,
    lowers: &[PathBuf],
    policy: Policy,
    action: Action,
    old: &IdentityRecord,
    now: &IdentityRecord,
    layers: &[String],
) -> Result<String> {
    match action {
        Action::Nothing => {
            log::warn!(
                "upgrade: the lower changed: {}; a factory reset runs anyway (ovl.reset or a \
                 pending request), carrying the keep-list",
                up::describe_change(old, now, layers)
            );
            Ok("a reset ran anyway".into())
        }
        Action::ReportShadowed => {
            let shadowed = match open_upperdir(upper_fs)? {
                Some(upper) => {
                    let lower_fds = open_lowers(lowers)?;
                    upgrade_scan::list_shadowed(upper.as_fd(), &borrow(&lower_fds))?
                }
                None => Vec::new(),
            };
            write_shadowed(&shadowed);
            log::warn!(
                "upgrade: {}",
                up::change_message(old, now, layers, policy, shadowed.len())
            );
            Ok(format!(
                "{} upper entries shadow the new lower",
                shadowed.len()
            ))
        }
        Action::PruneAndReport => {
            let report = match open_upperdir(upper_fs)? {
                Some(upper) => {
                    let lower_fds = open_lowers(lowers)?;
                    let report = upgrade_scan::prune(upper.as_fd(), &borrow(&lower_fds))?;
                    rustix::fs::syncfs(&upper).context("syncfs the upper after the prune")?;
                    report
                }
                None => upgrade_scan::PruneReport::default(),
            };
            write_shadowed(&report.shadowed);
            log::info!(
                "upgrade: pruned {} copies identical to the new lower and {} stale whiteouts",
                report.identical_removed.len(),
                report.stale_whiteouts_removed.len()
            );
            log::warn!(
                "upgrade: {}",
                up::change_message(old, now, layers, policy, report.shadowed.len())
            );
            Ok(format!(
                "{} identical copies and {} stale whiteouts pruned, {} upper entries shadow the \
                 new lower",
                report.identical_removed.len(),
                report.stale_whiteouts_removed.len(),
                report.shadowed.len()
            ))
        }
        Action::ResetKeeping => {
            // Durable before the identity is recorded: a power cut after this
            // leaves the reset pending, and the "reset" step runs it next.
            reset::request_as(upper_fs, reset::REQUESTED_BY_UPGRADE, false)?;
            log::warn!(
                "upgrade: {}",
                up::change_message(old, now, layers, policy, 0)
            );
            Ok("factory reset keeping the keep-list".into())
        }
    }
}

/// The identity of every lower (main first), and the time it took.
fn identify_all(lowers: &[PathBuf]) -> Result<(IdentityRecord, Duration)> {
    let mut ids = Vec::with_capacity(lowers.len());
    let mut total = Duration::ZERO;
    for path in lowers {
        let dev = sys::mount::dev_of(path)?;
        let node = sys::lower_identity::device_node(dev)
            .with_context(|| format!("the device of the lower at {}", path.display()))?;
        let (id, took) = sys::lower_identity::identify(&node, path)?;
        total += took;
        ids.push(id);
    }
    let mut ids = ids.into_iter();
    let main = ids.next().context("internal: no lower")?;
    Ok((
        IdentityRecord {
            main,
            extra: ids.collect(),
        },
        total,
    ))
}

fn open_upperdir(upper_fs: &Path) -> Result<Option<OwnedFd>> {
    let root = dirfd::open_dir(upper_fs)?;
    match dirfd::open_dir_at(root.as_fd(), layout::UPPER_C) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("open {}", layout::upperdir(upper_fs).display())),
    }
}

fn open_lowers(lowers: &[PathBuf]) -> Result<Vec<OwnedFd>> {
    lowers.iter().map(|p| dirfd::open_dir(p)).collect()
}

fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

fn write_shadowed(list: &[upgrade_scan::Shadowed]) {
    let path = Path::new(layout::SHADOWED_FILE);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, upgrade_scan::render_shadowed(list)));
    if let Err(e) = written {
        log::warn!("upgrade: cannot write {}: {e}", path.display());
    }
}

/// The last upgrade an earlier boot saw, from `.overlay-init/last-upgrade`.
fn read_last_upgrade(upper_fs: &Path, state: &mut UpgradeState) {
    let read = (|| -> Result<Option<Vec<u8>>> {
        let root = dirfd::open_dir(upper_fs)?;
        match dirfd::open_dir_at(root.as_fd(), layout::STATE_DIR_C) {
            Ok(dir) => dirfd::read_small_file(dir.as_fd(), layout::LAST_UPGRADE_C),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e).context("open .overlay-init"),
        }
    })();
    match read {
        Ok(Some(bytes)) => {
            let last = UpgradeState::parse(&String::from_utf8_lossy(&bytes));
            state.last_upgrade = last.last_upgrade;
            state.upgrade_policy = last.upgrade_policy;
            state.upgrade_result = last.upgrade_result;
        }
        Ok(None) => {}
        Err(e) => log::debug!("upgrade: no last upgrade to report: {e:#}"),
    }
}

fn write_last_upgrade(upper_fs: &Path, state: &UpgradeState) -> Result<()> {
    let persisted = UpgradeState {
        last_upgrade: state.last_upgrade.clone(),
        upgrade_policy: state.upgrade_policy.clone(),
        upgrade_result: state.upgrade_result.clone(),
        ..Default::default()
    };
    let root = dirfd::open_dir(upper_fs)?;
    let (dir, created) = dirfd::ensure_dir_at(root.as_fd(), layout::STATE_DIR_C, 0o755)?;
    if created {
        dirfd::fsync_dir(root.as_fd(), "upper root")?;
    }
    dirfd::write_durably(
        dir.as_fd(),
        layout::LAST_UPGRADE_C,
        persisted.render().as_bytes(),
    )
    .context("record the last upgrade")
}

/// The "reset" step's body: a pending reset (or `ovl.reset`) carries the
/// keep-list of the merged view into the fresh upper, unless the request says
/// `keep=none` (`overlay-init reset --all`).
///
/// The rule for a keep-list that cannot be carried (or read): the reset stops
/// before the swap, so the old upper is intact and the request stays pending;
/// the failure is counted in the request, and the caller boots on a tmpfs
/// (as for any failed reset). Once [`MAX_CARRY_FAILURES`] boots failed, the
/// next one resets without the keep-list, with a warning box: a reset that was
/// asked for always happens in the end, and never blocks every boot.
pub fn apply_reset(
    upper_fs: &Path,
    flags: BootFlags,
    lower_dev: u64,
    lowers: &[PathBuf],
) -> Result<ResetOutcome> {
    let request = if flags.failsafe {
        None
    } else {
        reset::pending_request(upper_fs)?
    };
    if flags.failsafe || (!flags.cmdline_reset && request.is_none()) {
        return reset::apply_pending(upper_fs, flags, Some(lower_dev));
    }
    let request = request.unwrap_or_else(|| Request {
        requested_by: Some("cmdline".into()),
        ..Default::default()
    });
    let keep = match keep_list_for(upper_fs, lowers, &request) {
        Ok(keep) => keep,
        Err(e) => return Err(count_carry_failure(upper_fs, &request, e)),
    };
    let mut last_done = None;
    let result = reset::apply_pending_keeping(
        upper_fs,
        flags,
        Some(lower_dev),
        &keep,
        LinkMode::HardLinkWherePossible,
        &mut |step| {
            last_done = Some(step);
            Ok(())
        },
    );
    match result {
        Err(e) if last_done == Some(Step::Prepare) => {
            Err(count_carry_failure(upper_fs, &request, e))
        }
        other => other,
    }
}

/// Count a failed carry in the (pending) request, durably; returns the error
/// with what happens next.
fn count_carry_failure(upper_fs: &Path, request: &Request, e: anyhow::Error) -> anyhow::Error {
    let failures = request.carry_failures + 1;
    let counted = Request {
        carry_failures: failures,
        ..request.clone()
    };
    let next = if failures >= MAX_CARRY_FAILURES {
        "the next boot resets without the keep-list".to_string()
    } else {
        format!(
            "the next boot tries again; after {MAX_CARRY_FAILURES} failures it resets without \
             the keep-list"
        )
    };
    match reset::write_request(upper_fs, &counted) {
        Ok(()) => e.context(format!(
            "the keep-list could not be carried (failure {failures}); the old upper is intact \
             and the reset still pending; {next}"
        )),
        Err(w) => e.context(format!(
            "the keep-list could not be carried, and the failure could not be counted ({w:#})"
        )),
    }
}

/// The keep-list this reset carries.
fn keep_list_for(upper_fs: &Path, lowers: &[PathBuf], request: &Request) -> Result<KeepList> {
    let empty = KeepList::default();
    if request.keep_none {
        log::info!("reset: `overlay-init reset --all`: the keep-list is not carried");
        return Ok(empty);
    }
    if request.carry_failures >= MAX_CARRY_FAILURES {
        warn_box(
            "factory reset WITHOUT the keep-list",
            &[
                format!(
                    "the keep-list could not be carried at {} boots",
                    request.carry_failures
                ),
                "this reset keeps nothing, so that it can complete".into(),
            ],
        );
        return Ok(empty);
    }
    let Some(upper) = open_upperdir(upper_fs)? else {
        return Ok(empty);
    };
    let lower_fds = open_lowers(lowers)?;
    let path = &keep::KEEP_LIST_PATH.as_bytes()[1..];
    let Some(bytes) = upgrade_scan::read_merged_file(upper.as_fd(), &borrow(&lower_fds), path)
        .with_context(|| format!("read the keep-list {}", keep::KEEP_LIST_PATH))?
    else {
        log::info!(
            "reset: no keep-list ({}): nothing is carried",
            keep::KEEP_LIST_PATH
        );
        return Ok(empty);
    };
    let list = keep::parse(&bytes);
    for bad in &list.bad {
        log::warn!("reset: {}: {bad}", keep::KEEP_LIST_PATH);
    }
    log::info!(
        "reset: keep-list {}: {} paths or globs",
        keep::KEEP_LIST_PATH,
        list.patterns.len()
    );
    Ok(list)
}
