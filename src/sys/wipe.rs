//! Removing a directory tree safely (the durable directory operations the
//! factory reset is built from are in [`super::dirfd`]).
//!
//! The wipe works only through directory file descriptors (`openat`,
//! `unlinkat`), never through paths, so a symlink planted anywhere in the tree
//! is removed as a link and never followed, and a directory renamed during the
//! walk cannot redirect it. Each directory is opened with
//! `O_DIRECTORY|O_NOFOLLOW` and compared with the wipe root by device and
//! mount id before the walk descends into it: a mount point (another
//! filesystem, or a bind mount of the same one) is left in place and reported.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{
    fstat, ioctl_getflags, ioctl_setflags, openat, renameat_with, statat, statx, unlinkat, AtFlags,
    Dir, FileType, IFlags, Mode, OFlags, RenameFlags, StatxAttributes, StatxFlags,
};
use rustix::io::Errno;

use super::dirfd::{is_dot_or_dotdot, open_dir_at};

/// Directories deeper than this below the wipe root are moved up to the root
/// (a rename on the same filesystem) and removed from there, so the number of
/// open descriptors stays bounded however deep the tree is.
const MAX_OPEN_DEPTH: usize = 48;

/// What a wipe did and what it had to leave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WipeReport {
    /// Directory entries removed (files, links, devices, directories).
    pub removed: u64,
    /// Directories moved up to the root because they were too deep.
    pub flattened: u64,
    /// Mount points found in the tree: left in place, never entered.
    pub mount_points_left: Vec<PathBuf>,
    /// The first [`FAILURES_LISTED`] entries that could not be removed, with
    /// the reason (all of them: [`WipeReport::failure_count`]).
    pub failures: Vec<String>,
    /// How many removals failed.
    pub failure_count: u64,
    /// The wipe stopped at a filesystem-wide error (`EROFS`, `EIO`): every
    /// further removal would fail the same way. What it was, and where.
    pub stopped: Option<String>,
}

/// How many failures a report lists by path; the rest are only counted.
pub const FAILURES_LISTED: usize = 5;

impl WipeReport {
    /// True when nothing was left behind.
    pub fn is_complete(&self) -> bool {
        self.mount_points_left.is_empty() && self.failure_count == 0 && self.stopped.is_none()
    }
}

/// Errors that hold for the whole filesystem, not one entry: the wipe stops at
/// the first (a read-only or failing disk would otherwise give one failure,
/// and one warning on the console, per file).
fn is_filesystem_wide(e: Errno) -> bool {
    matches!(e, Errno::ROFS | Errno::IO)
}

/// Where a directory lives: its device and, when the kernel reports it, its
/// mount. Two directories with the same identity are on the same mount. Shared by
/// the walks that never cross into another mount: the wipe, the keep-list carry,
/// the upgrade scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MountIdentity {
    dev: (u32, u32),
    mnt_id: Option<u64>,
    is_mount_root: bool,
}

pub(crate) fn mount_identity(fd: BorrowedFd<'_>) -> rustix::io::Result<MountIdentity> {
    let st = statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH,
        StatxFlags::TYPE | StatxFlags::MNT_ID,
    )?;
    let mnt_id = StatxFlags::from_bits_retain(st.stx_mask)
        .contains(StatxFlags::MNT_ID)
        .then_some(st.stx_mnt_id);
    let is_mount_root = st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
    Ok(MountIdentity {
        dev: (st.stx_dev_major, st.stx_dev_minor),
        mnt_id,
        is_mount_root,
    })
}

/// Is `child` a directory of the same mount as `root` (and not a mount root)?
pub(crate) fn same_mount(root: &MountIdentity, child: &MountIdentity) -> bool {
    root.dev == child.dev && root.mnt_id == child.mnt_id && !child.is_mount_root
}

/// A directory being emptied: its open stream and its name in the parent.
struct Frame {
    dir: Dir,
    name: Option<CString>,
}

struct Wiper<'a> {
    root: BorrowedFd<'a>,
    root_id: MountIdentity,
    label: &'a Path,
    report: WipeReport,
    flattened_this_pass: u64,
}

/// Remove everything inside the directory `root` (not `root` itself).
/// `label` names `root` in the report. Never follows a symlink, never enters
/// another filesystem or mount; clears immutable/append-only flags it meets.
pub fn wipe_contents(root: BorrowedFd<'_>, label: &Path) -> Result<WipeReport> {
    let root_id = mount_identity(root).with_context(|| format!("statx {}", label.display()))?;
    let mut wiper = Wiper {
        root,
        root_id,
        label,
        report: WipeReport::default(),
        flattened_this_pass: 0,
    };
    loop {
        if wiper.report.stopped.is_some() {
            return Ok(wiper.report);
        }
        // Directories that were too deep were moved up to the root; another
        // pass picks them up. Each pass either removes or flattens, so this ends.
        wiper.flattened_this_pass = 0;
        wiper.empty_root()?;
        if wiper.flattened_this_pass == 0 {
            // Later passes meet what earlier ones had to leave: report it once.
            let report = &mut wiper.report;
            report.mount_points_left.sort();
            report.mount_points_left.dedup();
            report.failures.sort();
            report.failures.dedup();
            return Ok(wiper.report);
        }
    }
}

impl Wiper<'_> {
    fn empty_root(&mut self) -> Result<()> {
        let root_stream =
            Dir::read_from(self.root).with_context(|| format!("read {}", self.label.display()))?;
        let mut stack = vec![Frame {
            dir: root_stream,
            name: None,
        }];
        while let Some(top) = stack.last_mut() {
            if self.report.stopped.is_some() {
                return Ok(());
            }
            let next = top.dir.read();
            match next {
                Some(Ok(entry)) => {
                    let name = entry.file_name();
                    if is_dot_or_dotdot(name) {
                        continue;
                    }
                    let name = name.to_owned();
                    let kind = entry.file_type();
                    if let Some(child) = self.visit(&stack, name, kind) {
                        stack.push(child);
                    }
                }
                Some(Err(e)) => {
                    self.fail(&stack, None, "read directory", e);
                    stack.pop();
                }
                None => {
                    let done = stack.pop().expect("the loop only runs with a frame");
                    if let (Some(name), Some(parent)) = (done.name, stack.last()) {
                        drop(done.dir);
                        self.remove_entry(&stack, parent_fd(parent), &name, true);
                    }
                }
            }
        }
        Ok(())
    }

    /// Handle one entry of the top frame; returns a frame to descend into.
    fn visit(&mut self, stack: &[Frame], name: CString, kind: FileType) -> Option<Frame> {
        let parent = parent_fd(stack.last().expect("visit runs with a frame"));
        if kind == FileType::Directory || kind == FileType::Unknown {
            match open_dir_at(parent, &name) {
                Ok(fd) => return self.enter(stack, parent, name, fd),
                Err(Errno::NOENT) => return None,
                // Not a directory after all (d_type unknown): unlink it below.
                Err(Errno::LOOP) | Err(Errno::NOTDIR) if kind == FileType::Unknown => {}
                Err(e) => {
                    self.fail(stack, Some(&name), "open directory", e);
                    return None;
                }
            }
        }
        self.remove_entry(stack, parent, &name, false);
        None
    }

    fn enter(
        &mut self,
        stack: &[Frame],
        parent: BorrowedFd<'_>,
        name: CString,
        fd: OwnedFd,
    ) -> Option<Frame> {
        let path = || self.path_of(stack, Some(&name));
        match mount_identity(fd.as_fd()) {
            Ok(id) if same_mount(&self.root_id, &id) => {}
            Ok(_) => {
                let path = path();
                log::warn!(
                    "wipe: {} is a mount point: left in place, not entered",
                    path.display()
                );
                self.report.mount_points_left.push(path);
                return None;
            }
            Err(e) => {
                self.fail(stack, Some(&name), "statx", e);
                return None;
            }
        }
        if stack.len() > MAX_OPEN_DEPTH {
            return self.flatten(stack, parent, name, fd);
        }
        match Dir::new(fd) {
            Ok(dir) => Some(Frame {
                dir,
                name: Some(name),
            }),
            Err(e) => {
                self.fail(stack, Some(&name), "directory stream", e);
                None
            }
        }
    }

    /// Move a too-deep directory up to the root under a name no other entry has.
    fn flatten(
        &mut self,
        stack: &[Frame],
        parent: BorrowedFd<'_>,
        name: CString,
        fd: OwnedFd,
    ) -> Option<Frame> {
        let ino = fstat(&fd).map(|st| st.st_ino).unwrap_or(0);
        drop(fd);
        for attempt in 0u32.. {
            let flat = CString::new(format!(".flat-{ino}-{attempt}"))
                .expect("no NUL in a formatted number");
            match renameat_with(parent, &name, self.root, &flat, RenameFlags::NOREPLACE) {
                Ok(()) => {
                    self.report.flattened += 1;
                    self.flattened_this_pass += 1;
                    return None;
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    self.fail(stack, Some(&name), "move up to the root", e);
                    return None;
                }
            }
        }
        None
    }

    fn remove_entry(&mut self, stack: &[Frame], parent: BorrowedFd<'_>, name: &CStr, is_dir: bool) {
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let mut result = unlinkat(parent, name, flags);
        if result == Err(Errno::PERM) {
            // Immutable or append-only flags on the entry or on its directory.
            clear_protective_flags(parent);
            clear_protective_flags_of_entry(parent, name);
            result = unlinkat(parent, name, flags);
        }
        match result {
            Ok(()) => self.report.removed += 1,
            Err(Errno::NOENT) => {}
            // A directory that still holds a mount point or a failure: already reported.
            Err(Errno::NOTEMPTY) if is_dir => {}
            Err(Errno::BUSY) => {
                let path = self.path_of(stack, Some(name));
                log::warn!("wipe: {} is a mount point: left in place", path.display());
                self.report.mount_points_left.push(path);
            }
            Err(e) => {
                self.fail(stack, Some(name), "remove", e);
            }
        }
    }

    /// Record that `what` failed for the entry `name` below `stack`.
    fn fail(&mut self, stack: &[Frame], name: Option<&CStr>, what: &str, e: Errno) {
        let path = self.path_of(stack, name);
        let line = format!("{}: {what}: {e}", path.display());
        self.report.failure_count += 1;
        if is_filesystem_wide(e) && self.report.stopped.is_none() {
            self.report.stopped = Some(line.clone());
        }
        if self.report.failures.len() < FAILURES_LISTED {
            self.report.failures.push(line);
        }
    }

    /// The path of `name` in the top frame (or of the top frame), for reports.
    fn path_of(&self, stack: &[Frame], name: Option<&CStr>) -> PathBuf {
        let mut path = self.label.to_path_buf();
        for part in stack.iter().filter_map(|f| f.name.as_deref()).chain(name) {
            path.push(OsStr::from_bytes(part.to_bytes()));
        }
        path
    }
}

fn parent_fd(frame: &Frame) -> BorrowedFd<'_> {
    frame.dir.fd().expect("rustix's Dir::fd never fails")
}

fn clear_protective_flags(fd: BorrowedFd<'_>) {
    if let Ok(flags) = ioctl_getflags(fd) {
        let protective = IFlags::IMMUTABLE | IFlags::APPEND;
        if flags.intersects(protective) {
            let _ = ioctl_setflags(fd, flags - protective);
        }
    }
}

/// Clear immutable/append-only on a regular file or directory. Opening is
/// limited to those two types so that no device node or FIFO is ever opened.
fn clear_protective_flags_of_entry(dir: BorrowedFd<'_>, name: &CStr) {
    let Ok(st) = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return;
    };
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile && kind != FileType::Directory {
        return;
    }
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    if let Ok(fd) = openat(dir, name, flags, Mode::empty()) {
        clear_protective_flags(fd.as_fd());
    }
}
