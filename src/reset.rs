//! Factory reset of a persistent upper: O(1) at boot, atomic, power-cut safe.
//!
//! Layout of the upper's filesystem (`upper_root`, `/overlay` in the new root):
//!
//! ```text
//! upper/                      overlay upperdir
//! work/                       overlay workdir
//! .overlay-init/reset-request a pending reset (durable; written by `overlay-init reset`)
//! .overlay-init/trash/GEN/    what earlier resets took out of the overlay's view
//! ```
//!
//! A reset prepares `trash/GEN/{upper,work}` (empty), then swaps each with the
//! live one by `renameat2(RENAME_EXCHANGE)`: `work/` first (the overlay never
//! shows it), then `upper/`, which is the one step after which the old state is
//! gone. Each step is fsynced before the next, and the request is removed only
//! once the swap is durable, so a power cut at any instant leaves either the
//! old upper with the request still pending, or a clean upper. The trash is
//! removed later by a detached low-priority child ([`start_trash_cleanup`]).
//! See docs/reset.md.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::dirfd::{self, Swap};
use crate::sys::lock;
use crate::sys::process;
use crate::sys::statfs;
use crate::sys::wipe::{self, WipeReport};

use crate::layout::{
    RESET_REQUEST_C as REQUEST, STATE_DIR_C as STATE_DIR, TRASH_C as TRASH, UPPER_C as UPPER,
    WORK_C as WORK,
};
/// Names used only when the filesystem cannot `RENAME_EXCHANGE`.
const UPPER_ASIDE: &CStr = c"upper.old";
const WORK_ASIDE: &CStr = c"work.old";
const DIR_MODE: u32 = 0o755;

/// The overlay's `upperdir` on the upper's filesystem.
pub fn upperdir(upper_root: &Path) -> PathBuf {
    crate::layout::upperdir(upper_root)
}

/// The overlay's `workdir` on the upper's filesystem.
pub fn workdir(upper_root: &Path) -> PathBuf {
    crate::layout::workdir(upper_root)
}

/// The directory holding the reset request and the trash.
pub fn state_dir(upper_root: &Path) -> PathBuf {
    crate::layout::state_dir(upper_root)
}

/// Where reset generations wait to be removed.
pub fn trash_dir(upper_root: &Path) -> PathBuf {
    crate::layout::trash_dir(upper_root)
}

/// What the kernel command line says about resetting. Both fields are
/// required on purpose: the caller has to say whether this is a failsafe boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFlags {
    /// `ovl.reset` was given.
    pub cmdline_reset: bool,
    /// `ovl.failsafe` was given: nothing on the persistent upper is touched.
    pub failsafe: bool,
}

/// Who asked for the reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Cmdline,
    Request,
    CmdlineAndRequest,
}

/// What this boot does with the persistent upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Use the upper as it is.
    Keep,
    /// Reset it first.
    Reset(Trigger),
    /// `ovl.failsafe`: leave it alone, even when a reset is pending.
    LeaveAloneFailsafe,
}

/// The pure rule: failsafe wins over everything, then any trigger resets.
pub fn decide(flags: BootFlags, request_pending: bool) -> Decision {
    match (flags.failsafe, flags.cmdline_reset, request_pending) {
        (true, _, _) => Decision::LeaveAloneFailsafe,
        (false, true, true) => Decision::Reset(Trigger::CmdlineAndRequest),
        (false, true, false) => Decision::Reset(Trigger::Cmdline),
        (false, false, true) => Decision::Reset(Trigger::Request),
        (false, false, false) => Decision::Keep,
    }
}

/// The durable steps of a reset, in order. After each one returns, its
/// effect is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// `ovl.reset` without a pending request: record one, so that a power cut
    /// before the swap still resets at the next boot.
    RecordRequest,
    /// `trash/GEN/upper` and `trash/GEN/work` created empty.
    Prepare,
    /// Only with a keep-list: the kept entries of the live `upper/` carried
    /// into `trash/GEN/upper` (`sys::carry`), then `syncfs`.
    CarryKept,
    /// The live `work/` swapped with the empty one (the overlay never shows it).
    SwapWork,
    /// The live `upper/` swapped with the empty one: the old state is gone.
    SwapUpper,
    /// The request removed.
    ClearRequest,
}

impl Step {
    /// The steps of a reset without a keep-list, in order.
    pub const ALL: [Step; 5] = [
        Step::RecordRequest,
        Step::Prepare,
        Step::SwapWork,
        Step::SwapUpper,
        Step::ClearRequest,
    ];

    /// The steps of a reset with a keep-list ([`apply_pending_keeping`]), in order.
    pub const ALL_KEEPING: [Step; 6] = [
        Step::RecordRequest,
        Step::Prepare,
        Step::CarryKept,
        Step::SwapWork,
        Step::SwapUpper,
        Step::ClearRequest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::RecordRequest => "record-request",
            Step::Prepare => "prepare",
            Step::CarryKept => "carry-kept",
            Step::SwapWork => "swap-work",
            Step::SwapUpper => "swap-upper",
            Step::ClearRequest => "clear-request",
        }
    }
}

/// How long one step took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTiming {
    pub step: Step,
    pub took: Duration,
}

/// What [`apply_pending`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetOutcome {
    /// No reset was asked for; the upper is untouched.
    NotRequested,
    /// `ovl.failsafe`: the upper was not even looked at.
    SkippedFailsafe,
    /// The upper and work directories are fresh; the old ones wait in `trash`.
    Done {
        trigger: Trigger,
        trash: PathBuf,
        steps: Vec<StepTiming>,
        total: Duration,
    },
}

/// Called by the boot path on the mounted upper filesystem, before the overlay
/// is mounted. `lower_dev` is the `st_dev` of the mounted main lower: a reset
/// refuses to run when the upper lives on the same device.
pub fn apply_pending(
    upper_root: &Path,
    flags: BootFlags,
    lower_dev: Option<u64>,
) -> Result<ResetOutcome> {
    apply_pending_with_hook(upper_root, flags, lower_dev, &mut |_| Ok(()))
}

/// [`apply_pending_with_hook`] that carries the entries the keep-list names
/// from the old upper into the fresh one before the swap (step
/// `carry-kept`), so the swap puts them in place atomically. An empty list
/// carries nothing (that is `overlay-init reset --all`).
pub fn apply_pending_keeping(
    upper_root: &Path,
    flags: BootFlags,
    lower_dev: Option<u64>,
    keep: &crate::upgrade::keep::KeepList,
    link: crate::sys::carry::LinkMode,
    after_step: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<ResetOutcome> {
    let mut carry = |old: BorrowedFd<'_>, new: BorrowedFd<'_>| -> Result<()> {
        let report = crate::sys::carry::carry(old, new, keep, link)?;
        log::info!(
            "reset: carried {} kept paths ({} entries: {} linked, {} copied) in {:?}, syncfs {:?}",
            report.kept.len(),
            report.entries,
            report.linked,
            report.copied,
            report.walk_took,
            report.sync_took
        );
        for m in &report.mount_points_skipped {
            log::warn!("reset: {} is a mount point: not carried", m.display());
        }
        Ok(())
    };
    apply_inner(upper_root, flags, lower_dev, after_step, Some(&mut carry))
}

/// [`apply_pending`] with a hook called after each durable step; an error
/// from the hook stops the reset there (fault injection for tests).
pub fn apply_pending_with_hook(
    upper_root: &Path,
    flags: BootFlags,
    lower_dev: Option<u64>,
    after_step: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<ResetOutcome> {
    apply_inner(upper_root, flags, lower_dev, after_step, None)
}

/// Fills the fresh upper (second fd) from the live one (first fd).
type Fill<'a> = &'a mut dyn FnMut(BorrowedFd<'_>, BorrowedFd<'_>) -> Result<()>;

fn apply_inner(
    upper_root: &Path,
    flags: BootFlags,
    lower_dev: Option<u64>,
    after_step: &mut dyn FnMut(Step) -> Result<()>,
    fill: Option<Fill<'_>>,
) -> Result<ResetOutcome> {
    if flags.failsafe {
        log::info!("reset: ovl.failsafe: the persistent upper is left untouched");
        return Ok(ResetOutcome::SkippedFailsafe);
    }
    let root = dirfd::open_dir(upper_root)?;
    let request = read_request_at(root.as_fd()).with_context(|| {
        format!(
            "check for a reset request in {}",
            state_dir(upper_root).display()
        )
    })?;
    let pending = request.is_some();
    let trigger = match decide(flags, pending) {
        Decision::Keep => return Ok(ResetOutcome::NotRequested),
        Decision::LeaveAloneFailsafe => return Ok(ResetOutcome::SkippedFailsafe),
        Decision::Reset(trigger) => trigger,
    };
    let upper_dev = dirfd::device_of(root.as_fd())
        .with_context(|| format!("fstat {}", upper_root.display()))?;
    if lower_dev == Some(upper_dev) {
        bail!(
            "refusing to reset {}: the upper is on the same device as the lower ({})",
            upper_root.display(),
            format_dev(upper_dev)
        );
    }
    log::info!(
        "reset: {} asked for a factory reset of {}",
        describe(trigger, request.as_ref()),
        upper_root.display()
    );
    let mut run = Run {
        upper_root,
        started: Instant::now(),
        steps: Vec::new(),
        after_step,
    };
    let trash = reset_steps(&mut run, root.as_fd(), pending, fill)?;
    let total = run.started.elapsed();
    log::info!(
        "reset: done in {total:?}; the old upper waits in {} for removal",
        trash.display()
    );
    Ok(ResetOutcome::Done {
        trigger,
        trash,
        steps: run.steps,
        total,
    })
}

struct Run<'a> {
    upper_root: &'a Path,
    started: Instant,
    steps: Vec<StepTiming>,
    after_step: &'a mut dyn FnMut(Step) -> Result<()>,
}

impl Run<'_> {
    fn step<T>(&mut self, step: Step, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let began = Instant::now();
        let value = work().with_context(|| {
            format!(
                "reset of {}: step {}",
                self.upper_root.display(),
                step.name()
            )
        })?;
        let took = began.elapsed();
        log::info!("reset: step {} took {took:?}", step.name());
        self.steps.push(StepTiming { step, took });
        (self.after_step)(step)
            .with_context(|| format!("reset stopped after step {}", step.name()))?;
        Ok(value)
    }
}

fn reset_steps(
    run: &mut Run<'_>,
    root: BorrowedFd<'_>,
    pending: bool,
    fill: Option<Fill<'_>>,
) -> Result<PathBuf> {
    let (state, _) = ensure_state_dir(root)?;
    if !pending {
        run.step(Step::RecordRequest, || {
            dirfd::write_durably(state.as_fd(), REQUEST, b"requested-by=cmdline\n")
        })?;
    }
    let (generation, name) = run.step(Step::Prepare, || prepare_generation(state.as_fd()))?;
    if let Some(fill) = fill {
        run.step(Step::CarryKept, || {
            let old = match dirfd::open_dir_at(root, UPPER) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(()),
                Err(e) => return Err(e).context("open the live upper/"),
            };
            let new =
                dirfd::open_dir_at(generation.as_fd(), UPPER).context("open the fresh upper/")?;
            fill(old.as_fd(), new.as_fd())
        })?;
    }
    run.step(Step::SwapWork, || {
        swap(root, WORK, generation.as_fd(), WORK_ASIDE)
    })?;
    run.step(Step::SwapUpper, || {
        swap(root, UPPER, generation.as_fd(), UPPER_ASIDE)
    })?;
    run.step(Step::ClearRequest, || {
        dirfd::remove_durably(state.as_fd(), REQUEST)?;
        Ok(())
    })?;
    Ok(trash_dir(run.upper_root).join(name))
}

/// `.overlay-init/` (created durably if missing) and whether it was created.
fn ensure_state_dir(root: BorrowedFd<'_>) -> Result<(OwnedFd, bool)> {
    let (state, created) = dirfd::ensure_dir_at(root, STATE_DIR, DIR_MODE)?;
    if created {
        dirfd::fsync_dir(root, "upper root")?;
    }
    Ok((state, created))
}

/// Create `trash/GEN/{upper,work}`, empty, and make them durable.
fn prepare_generation(state: BorrowedFd<'_>) -> Result<(OwnedFd, String)> {
    let (trash, trash_created) = dirfd::ensure_dir_at(state, TRASH, DIR_MODE)?;
    if trash_created {
        dirfd::fsync_dir(state, crate::layout::STATE_DIR)?;
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let base = format!(
        "reset-{}.{:09}-{}",
        stamp.as_secs(),
        stamp.subsec_nanos(),
        std::process::id()
    );
    for attempt in 0u32.. {
        let name = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}-{attempt}")
        };
        let c_name = std::ffi::CString::new(name.clone()).expect("no NUL in a formatted name");
        if !dirfd::mkdir_at(trash.as_fd(), &c_name, 0o700)? {
            continue;
        }
        let generation = dirfd::open_dir_at(trash.as_fd(), &c_name)
            .with_context(|| format!("open trash/{name}"))?;
        dirfd::mkdir_at(generation.as_fd(), UPPER, DIR_MODE)?;
        dirfd::mkdir_at(generation.as_fd(), WORK, DIR_MODE)?;
        dirfd::fsync_dir(generation.as_fd(), &format!("trash/{name}"))?;
        dirfd::fsync_dir(trash.as_fd(), crate::layout::TRASH)?;
        return Ok((generation, name));
    }
    unreachable!("the loop above only ends by returning")
}

/// Swap the live `name` with the empty one in the generation, durably.
fn swap(root: BorrowedFd<'_>, name: &CStr, generation: BorrowedFd<'_>, aside: &CStr) -> Result<()> {
    let how = dirfd::swap_into_place(root, name, generation, name, aside)?;
    if how == Swap::MovedAsideThenMoved {
        log::warn!(
            "reset: the filesystem cannot RENAME_EXCHANGE; {name:?} was moved aside, then replaced"
        );
    }
    // Both directories changed: make both durable before the next step.
    dirfd::fsync_dir(root, "upper root")?;
    dirfd::fsync_dir(generation, "trash generation")
}

/// The pending request's details; `None` when no reset is pending.
fn read_request_at(root: BorrowedFd<'_>) -> Result<Option<Request>> {
    let state = match dirfd::open_dir_at(root, STATE_DIR) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e).context(format!("open {}", crate::layout::STATE_DIR)),
    };
    Ok(dirfd::read_small_file(state.as_fd(), REQUEST)?.map(|c| Request::parse(&c)))
}

fn describe(trigger: Trigger, request: Option<&Request>) -> &'static str {
    let by_upgrade = request.and_then(|r| r.requested_by.as_deref()) == Some(REQUESTED_BY_UPGRADE);
    match trigger {
        Trigger::Request if by_upgrade => "ovl.upgrade=reset (the lower changed)",
        Trigger::Cmdline => "ovl.reset on the kernel command line",
        Trigger::Request => "a pending request (overlay-init reset)",
        Trigger::CmdlineAndRequest => "ovl.reset and a pending request",
    }
}

/// `requested-by=` of a reset the upgrade step asked for.
pub const REQUESTED_BY_UPGRADE: &str = "upgrade";

/// A pending reset request, as recorded in `.overlay-init/reset-request`:
/// `requested-by=cli|cmdline|upgrade`, `keep=none` (`overlay-init reset
/// --all`: the keep-list is not carried), `carry-failures=N` (how many
/// boots failed to carry the keep-list; see [`MAX_CARRY_FAILURES`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub requested_by: Option<String>,
    /// `false` for `keep=none`.
    pub keep_none: bool,
    pub carry_failures: u32,
}

/// After this many boots whose carry of the keep-list failed, the pending
/// reset runs without the keep-list (a plain factory reset, with a warning):
/// a keep-list that cannot be carried must not stop every boot forever.
pub const MAX_CARRY_FAILURES: u32 = 2;

impl Request {
    /// Parse the request file; unknown lines are ignored (an older request
    /// holds only `requested-by=`).
    pub fn parse(contents: &[u8]) -> Request {
        let text = String::from_utf8_lossy(contents);
        let mut r = Request::default();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("requested-by", v)) => r.requested_by = Some(v.trim().to_string()),
                Some(("keep", v)) => r.keep_none = v.trim() == "none",
                Some(("carry-failures", v)) => r.carry_failures = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        r
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "requested-by={}\n",
            self.requested_by.as_deref().unwrap_or("unknown")
        );
        if self.keep_none {
            s.push_str("keep=none\n");
        }
        if self.carry_failures > 0 {
            s.push_str(&format!("carry-failures={}\n", self.carry_failures));
        }
        s
    }
}

/// The pending request on `upper_root`, if any.
pub fn pending_request(upper_root: &Path) -> Result<Option<Request>> {
    let root = dirfd::open_dir(upper_root)?;
    read_request_at(root.as_fd()).with_context(|| {
        format!(
            "read the reset request in {}",
            state_dir(upper_root).display()
        )
    })
}

/// Record `request` durably (replacing a pending one).
pub fn write_request(upper_root: &Path, request: &Request) -> Result<()> {
    let root = dirfd::open_dir(upper_root)?;
    let (state, _) =
        ensure_state_dir(root.as_fd()).with_context(|| format!("in {}", upper_root.display()))?;
    dirfd::write_durably(state.as_fd(), REQUEST, request.render().as_bytes()).with_context(|| {
        format!(
            "record a reset request in {}",
            state_dir(upper_root).display()
        )
    })
}

fn format_dev(dev: u64) -> String {
    format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
}

/// Start removing the trash in a detached, lowest-priority child process and
/// return at once; `Ok(None)` when the trash is empty. Call it right before
/// exec'ing the real init (the process must be single-threaded), with the
/// path of the upper's filesystem as seen at that moment (`/overlay`).
/// An interrupted removal is picked up by the next boot's call.
pub fn start_trash_cleanup(upper_root: &Path) -> Result<Option<i32>> {
    let Some(trash) = open_trash_if_nonempty(upper_root)? else {
        return Ok(None);
    };
    let label = trash_dir(upper_root);
    let pid = process::spawn_detached(c"ovl-trash-wipe", move || {
        match remove_trash_at(trash.as_fd(), &label) {
            Ok(report) if report.is_complete() => 0,
            Ok(_) => 1,
            Err(e) => {
                log::error!("reset: removing the trash failed: {e:#}");
                2
            }
        }
    })?;
    log::info!("reset: removing the trash in the background (pid {pid})");
    Ok(Some(pid))
}

/// Remove the trash now, in this process. What [`start_trash_cleanup`]'s
/// child runs; also usable from the CLI.
pub fn remove_trash_now(upper_root: &Path) -> Result<WipeReport> {
    match open_trash_if_nonempty(upper_root)? {
        Some(trash) => remove_trash_at(trash.as_fd(), &trash_dir(upper_root)),
        None => Ok(WipeReport::default()),
    }
}

/// Finish removing the trash: wait for a background remover that holds it
/// (its `flock`), then remove whatever is left, in this process. For
/// `overlay-init reset --finish` (e.g. before imaging a disk).
pub fn finish_trash_removal(upper_root: &Path) -> Result<WipeReport> {
    let Some(trash) = open_trash_if_nonempty(upper_root)? else {
        return Ok(WipeReport::default());
    };
    let label = trash_dir(upper_root);
    lock::lock_exclusive(trash.as_fd()).with_context(|| format!("lock {}", label.display()))?;
    wipe::wipe_contents(trash.as_fd(), &label)
}

fn open_trash_if_nonempty(upper_root: &Path) -> Result<Option<OwnedFd>> {
    let root = dirfd::open_dir(upper_root)?;
    let Some(state) = open_if_present(root.as_fd(), STATE_DIR)? else {
        return Ok(None);
    };
    let Some(trash) = open_if_present(state.as_fd(), TRASH)? else {
        return Ok(None);
    };
    let label = trash_dir(upper_root);
    let empty = dirfd::list_names(trash.as_fd())
        .with_context(|| format!("list {}", label.display()))?
        .is_empty();
    Ok((!empty).then_some(trash))
}

fn open_if_present(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<OwnedFd>> {
    match dirfd::open_dir_at(dir, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("open {name:?} (no symlinks)")),
    }
}

fn remove_trash_at(trash: BorrowedFd<'_>, label: &Path) -> Result<WipeReport> {
    if !lock::try_lock_exclusive(trash)? {
        log::info!(
            "reset: {} is already being removed by another process",
            label.display()
        );
        return Ok(WipeReport::default());
    }
    let began = Instant::now();
    let report = wipe::wipe_contents(trash, label)?;
    log::info!(
        "reset: trash removal took {:?}: {} entries removed, {} mount points left, {} failures",
        began.elapsed(),
        report.removed,
        report.mount_points_left.len(),
        report.failure_count
    );
    if let Some(stopped) = &report.stopped {
        log::warn!("reset: trash removal stopped at a filesystem-wide error: {stopped}");
    }
    // The first few by path; the count above says how many in all.
    for failure in &report.failures {
        log::warn!("reset: could not remove {failure}");
    }
    Ok(report)
}

/// `overlay-init reset`: record a durable request, honoured at the next boot.
/// `upper_root` is the upper's filesystem in the running system (`/overlay`).
pub fn request(upper_root: &Path) -> Result<()> {
    request_as(upper_root, "cli", false)
}

/// [`request`] by `requested_by`; `keep_none` (`overlay-init reset --all`)
/// makes the reset ignore the keep-list.
pub fn request_as(upper_root: &Path, requested_by: &str, keep_none: bool) -> Result<()> {
    let root = dirfd::open_dir(upper_root)?;
    if statfs::is_volatile_fs(root.as_fd())? {
        bail!(
            "{} is in memory (tmpfs): every boot already starts from the factory state",
            upper_root.display()
        );
    }
    let (state, _) =
        ensure_state_dir(root.as_fd()).with_context(|| format!("in {}", upper_root.display()))?;
    let request = Request {
        requested_by: Some(requested_by.to_string()),
        keep_none,
        carry_failures: 0,
    };
    dirfd::write_durably(state.as_fd(), REQUEST, request.render().as_bytes()).with_context(
        || {
            format!(
                "record a reset request in {}",
                state_dir(upper_root).display()
            )
        },
    )?;
    log::info!(
        "reset: requested; the next boot wipes {}",
        upperdir(upper_root).display()
    );
    Ok(())
}

/// `overlay-init reset --cancel`: drop a pending request. `Ok(true)` if there was one.
pub fn cancel(upper_root: &Path) -> Result<bool> {
    let root = dirfd::open_dir(upper_root)?;
    let Some(state) = open_if_present(root.as_fd(), STATE_DIR)? else {
        return Ok(false);
    };
    dirfd::remove_durably(state.as_fd(), REQUEST).with_context(|| {
        format!(
            "cancel the reset request in {}",
            state_dir(upper_root).display()
        )
    })
}

/// What `overlay-init status` reports about resets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// A reset will happen at the next boot.
    pub reset_pending: bool,
    /// Who recorded it (`cli` or `cmdline`), when known.
    pub requested_by: Option<String>,
    /// Old generations still waiting to be removed.
    pub trash_generations: usize,
}

/// Report whether a reset is pending and how much trash is left.
pub fn status(upper_root: &Path) -> Result<Status> {
    let root = dirfd::open_dir(upper_root)?;
    let Some(state) = open_if_present(root.as_fd(), STATE_DIR)? else {
        return Ok(Status {
            reset_pending: false,
            requested_by: None,
            trash_generations: 0,
        });
    };
    let contents = dirfd::read_small_file(state.as_fd(), REQUEST)?;
    let requested_by = contents.as_deref().and_then(parse_requested_by);
    let trash_generations = match open_if_present(state.as_fd(), TRASH)? {
        Some(trash) => dirfd::list_names(trash.as_fd())?.len(),
        None => 0,
    };
    Ok(Status {
        reset_pending: contents.is_some(),
        requested_by,
        trash_generations,
    })
}

fn parse_requested_by(contents: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(contents).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("requested-by="))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: BootFlags = BootFlags {
        cmdline_reset: false,
        failsafe: false,
    };

    #[test]
    fn failsafe_never_resets_whatever_asks() {
        for cmdline_reset in [false, true] {
            for pending in [false, true] {
                let flags = BootFlags {
                    cmdline_reset,
                    failsafe: true,
                };
                assert_eq!(decide(flags, pending), Decision::LeaveAloneFailsafe);
            }
        }
    }

    #[test]
    fn any_trigger_resets_and_names_its_source() {
        assert_eq!(decide(PLAIN, false), Decision::Keep);
        assert_eq!(decide(PLAIN, true), Decision::Reset(Trigger::Request));
        let cmdline = BootFlags {
            cmdline_reset: true,
            failsafe: false,
        };
        assert_eq!(decide(cmdline, false), Decision::Reset(Trigger::Cmdline));
        assert_eq!(
            decide(cmdline, true),
            Decision::Reset(Trigger::CmdlineAndRequest)
        );
    }

    #[test]
    fn layout_keeps_upper_and_work_at_the_top() {
        let root = Path::new("/overlay");
        assert_eq!(upperdir(root), Path::new("/overlay/upper"));
        assert_eq!(workdir(root), Path::new("/overlay/work"));
        assert_eq!(trash_dir(root), Path::new("/overlay/.overlay-init/trash"));
    }

    #[test]
    fn requested_by_is_read_from_the_request() {
        assert_eq!(
            parse_requested_by(b"requested-by=cli\n").as_deref(),
            Some("cli")
        );
        assert_eq!(parse_requested_by(b"garbage"), None);
        assert_eq!(parse_requested_by(&[0xff, 0xfe]), None);
    }

    #[test]
    fn request_round_trips_and_reads_old_requests() {
        let r = Request {
            requested_by: Some("upgrade".into()),
            keep_none: true,
            carry_failures: 1,
        };
        assert_eq!(
            r.render(),
            "requested-by=upgrade\nkeep=none\ncarry-failures=1\n"
        );
        assert_eq!(Request::parse(r.render().as_bytes()), r);
        let old = Request::parse(b"requested-by=cli\n");
        assert_eq!(old.requested_by.as_deref(), Some("cli"));
        assert!(!old.keep_none);
        assert_eq!(old.carry_failures, 0);
        assert_eq!(Request::parse(b"carry-failures=x\n").carry_failures, 0);
        assert_eq!(
            describe(Trigger::Request, Some(&r)),
            "ovl.upgrade=reset (the lower changed)"
        );
        assert_eq!(
            describe(Trigger::Request, Some(&old)),
            "a pending request (overlay-init reset)"
        );
    }

    #[test]
    fn steps_are_listed_in_execution_order() {
        let names: Vec<_> = Step::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "record-request",
                "prepare",
                "swap-work",
                "swap-upper",
                "clear-request"
            ]
        );
    }
}
