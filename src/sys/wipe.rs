//! Removing a directory tree safely, and the durable directory operations the
//! factory reset is built from.
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

use anyhow::{bail, Context, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{
    fstat, fsync, ioctl_getflags, ioctl_setflags, mkdirat, openat, renameat_with, statat, statx,
    unlinkat, AtFlags, Dir, FileType, IFlags, Mode, OFlags, RenameFlags, StatxAttributes,
    StatxFlags, CWD,
};
use rustix::io::Errno;

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
    /// Entries that could not be removed, with the reason.
    pub failures: Vec<String>,
}

impl WipeReport {
    /// True when nothing was left behind.
    pub fn is_complete(&self) -> bool {
        self.mount_points_left.is_empty() && self.failures.is_empty()
    }
}

/// Where a directory lives: its device and, when the kernel reports it, its
/// mount. Two directories with the same identity are on the same mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MountIdentity {
    dev: (u32, u32),
    mnt_id: Option<u64>,
    is_mount_root: bool,
}

fn mount_identity(fd: BorrowedFd<'_>) -> rustix::io::Result<MountIdentity> {
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

fn same_mount(root: &MountIdentity, child: &MountIdentity) -> bool {
    root.dev == child.dev && root.mnt_id == child.mnt_id && !child.is_mount_root
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// Open the directory `name` inside `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// Open a directory by path; the last component is never followed.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    openat(CWD, path, DIR_FLAGS, Mode::empty())
        .with_context(|| format!("open directory {} (no symlinks)", path.display()))
}

/// The device (`st_dev`) a file descriptor lives on.
pub fn device_of(fd: BorrowedFd<'_>) -> Result<u64> {
    Ok(fstat(fd).context("fstat")?.st_dev)
}

/// Make a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: BorrowedFd<'_>, what: &str) -> Result<()> {
    fsync(dir).with_context(|| format!("fsync directory {what}"))
}

/// Does `name` exist inside `dir` (a symlink counts, and is not followed)?
pub fn exists_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("stat {name:?}")),
    }
}

/// Create directory `name` in `dir`; `Ok(false)` when it already exists.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<bool> {
    match mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("mkdir {name:?}")),
    }
}

/// Open directory `name` in `dir`, creating it first if it is missing.
/// Returns the descriptor and whether it was created.
pub fn ensure_dir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(OwnedFd, bool)> {
    let created = mkdir_at(dir, name, mode)?;
    let fd =
        open_dir_at(dir, name).with_context(|| format!("open directory {name:?} (no symlinks)"))?;
    Ok((fd, created))
}

/// How [`swap_into_place`] put the fresh entry in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// One atomic `RENAME_EXCHANGE`: the old entry now sits where the fresh one was.
    Exchanged,
    /// There was no old entry: the fresh one was simply renamed into place.
    Moved,
    /// The filesystem cannot exchange: the old entry was renamed away first,
    /// then the fresh one renamed into place (two renames; the first one is
    /// the point after which the old entry is gone).
    MovedAsideThenMoved,
}

/// Put `fresh_dir/fresh_name` at `live_dir/live_name`, moving whatever was
/// there to `fresh_dir/fresh_name` (or `fresh_dir/aside_name` when the
/// filesystem cannot exchange). Never follows symlinks: names are moved, not
/// what they point to.
pub fn swap_into_place(
    live_dir: BorrowedFd<'_>,
    live_name: &CStr,
    fresh_dir: BorrowedFd<'_>,
    fresh_name: &CStr,
    aside_name: &CStr,
) -> Result<Swap> {
    match renameat_with(
        fresh_dir,
        fresh_name,
        live_dir,
        live_name,
        RenameFlags::EXCHANGE,
    ) {
        Ok(()) => return Ok(Swap::Exchanged),
        Err(Errno::NOENT) => {}
        Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) => {
            // No RENAME_EXCHANGE here: move the old entry aside, then the fresh one in.
            if exists_at(live_dir, live_name)? {
                renameat_with(
                    live_dir,
                    live_name,
                    fresh_dir,
                    aside_name,
                    RenameFlags::NOREPLACE,
                )
                .with_context(|| format!("rename {live_name:?} aside to {aside_name:?}"))?;
                move_into_place(live_dir, live_name, fresh_dir, fresh_name)?;
                return Ok(Swap::MovedAsideThenMoved);
            }
        }
        Err(e) => {
            return Err(e).with_context(|| format!("exchange {live_name:?} with {fresh_name:?}"))
        }
    }
    // ENOENT: either the live entry is missing (move the fresh one in), or the
    // fresh one is missing, which the caller never lets happen.
    if !exists_at(fresh_dir, fresh_name)? {
        bail!("{fresh_name:?} to swap into place is missing");
    }
    move_into_place(live_dir, live_name, fresh_dir, fresh_name)?;
    Ok(Swap::Moved)
}

fn move_into_place(
    live_dir: BorrowedFd<'_>,
    live_name: &CStr,
    fresh_dir: BorrowedFd<'_>,
    fresh_name: &CStr,
) -> Result<()> {
    renameat_with(
        fresh_dir,
        fresh_name,
        live_dir,
        live_name,
        RenameFlags::NOREPLACE,
    )
    .with_context(|| format!("rename {fresh_name:?} into place as {live_name:?}"))
}

/// Write `contents` to `dir/name` so that it survives a power cut: write a
/// temporary file, fsync it, rename it over `name`, fsync the directory.
pub fn write_durably(dir: BorrowedFd<'_>, name: &CStr, contents: &[u8]) -> Result<()> {
    let mut tmp = name.to_bytes().to_vec();
    tmp.extend_from_slice(b".tmp");
    let tmp = CString::new(tmp).expect("a CStr plus a suffix has no NUL");
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = openat(dir, tmp.as_c_str(), flags, Mode::from_raw_mode(0o644))
        .with_context(|| format!("create {tmp:?}"))?;
    let mut rest = contents;
    while !rest.is_empty() {
        let n = rustix::io::write(&file, rest).with_context(|| format!("write {tmp:?}"))?;
        rest = &rest[n..];
    }
    fsync(&file).with_context(|| format!("fsync {tmp:?}"))?;
    drop(file);
    renameat_with(dir, tmp.as_c_str(), dir, name, RenameFlags::empty())
        .with_context(|| format!("rename {tmp:?} to {name:?}"))?;
    fsync_dir(dir, &format!("holding {name:?}"))
}

/// Remove `dir/name` durably (unlink + fsync the directory).
/// `Ok(false)` when there was nothing to remove.
pub fn remove_durably(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    match unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("remove {name:?}")),
    }
    fsync_dir(dir, &format!("that held {name:?}"))?;
    Ok(true)
}

/// Read a small file `dir/name` without following a symlink; `None` if missing.
pub fn read_small_file(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<Vec<u8>>> {
    let file = match openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("open {name:?}")),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = rustix::io::read(&file, &mut buf).with_context(|| format!("read {name:?}"))?;
        if n == 0 || out.len() > 64 * 1024 {
            return Ok(Some(out));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The names in a directory, without `.` and `..`.
pub fn list_names(dir: BorrowedFd<'_>) -> Result<Vec<CString>> {
    let mut names = Vec::new();
    let mut reader = Dir::read_from(dir).context("open directory stream")?;
    while let Some(entry) = reader.read() {
        let entry = entry.context("read directory")?;
        let name = entry.file_name();
        if !is_dot_or_dotdot(name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn is_dot_or_dotdot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
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
        self.report
            .failures
            .push(format!("{}: {what}: {e}", path.display()));
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

/// Is this descriptor on a filesystem that lives in memory only (tmpfs, ramfs)?
pub fn is_volatile_fs(fd: BorrowedFd<'_>) -> Result<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let fs = rustix::fs::fstatfs(fd).context("statfs")?;
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between targets
    let kind = fs.f_type as i64;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

/// Take an exclusive `flock`, waiting while another process holds it.
pub fn lock_exclusive(fd: BorrowedFd<'_>) -> Result<()> {
    rustix::fs::flock(fd, rustix::fs::FlockOperation::LockExclusive).context("flock")
}

/// Take an exclusive `flock` without waiting; `Ok(false)` when another
/// process holds it. The lock lasts as long as the descriptor.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> Result<bool> {
    match rustix::fs::flock(fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e).context("flock"),
    }
}

/// Run `job` in a detached child process (its own session, lowest CPU
/// priority) and return its pid at once. The child exits with `job`'s code.
///
/// Only call this from a single-threaded process (PID 1 before it execs the
/// real init) or one whose other threads hold no locks.
pub fn spawn_detached(name: &CStr, job: impl FnOnce() -> i32) -> Result<i32> {
    // SAFETY: the boot path is single-threaded when it calls this, so the child
    // starts with no lock held by a thread that does not exist in it; the child
    // runs `job` and leaves through `exit` without returning into the caller.
    // libc's fork (not a raw clone), so the C library's own state stays right.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork the trash remover"),
        child @ 1.. => Ok(child),
        _ => {
            let _ = rustix::process::setsid();
            let _ = rustix::process::setpriority_process(None, 19);
            let _ = rustix::thread::set_name(name);
            let code = job();
            std::process::exit(code)
        }
    }
}
