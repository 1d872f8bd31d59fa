//! Carrying kept entries from an old upper into a fresh one (the keep-list of
//! a reset). Runs on the upper's filesystem before the overlay is mounted,
//! before the reset's `RENAME_EXCHANGE`: the fresh `trash/GEN/upper` is filled
//! here, made durable with one `syncfs`, and only then swapped in.
//!
//! - Only `*at` calls relative to directory descriptors; directories opened
//!   `O_DIRECTORY|O_NOFOLLOW`; a symlink is recreated as a symlink, never
//!   followed; a directory on another mount (device or mount id differs, or a
//!   mount root) is skipped and reported, never entered.
//! - Non-directories are hard-linked ([`LinkMode::HardLinkWherePossible`]):
//!   the cost does not grow with their size, and mode, owner, xattrs and
//!   timestamps are the inode's own. Where a link fails (`EMLINK`, or
//!   [`LinkMode::Copy`]) the entry is recreated: regular files copied
//!   (`copy_file_range`), symlinks by `symlinkat`, whiteouts (char 0:0),
//!   devices, FIFOs and sockets by `mknodat`; then owner, mode, every xattr and
//!   the timestamps are set.
//! - Directories are created with their owner, mode, xattrs (the overlay's
//!   opaque marker included) and timestamps. The parents of a kept entry that
//!   are not kept themselves get owner, mode and timestamps and their xattrs
//!   *except* the overlay's own (`trusted.overlay.*`, `user.overlay.*`): an
//!   opaque parent would otherwise hide the new lower's whole directory.
//! - Any failure is an error: the caller must not swap a half-carried upper in.
//! - The copy path reads and sets the xattrs of symlinks and device nodes
//!   through `/proc/self/fd/DIR/NAME` with the `l*xattr` calls (there are no
//!   `*at` forms): `/proc` must be mounted (it is, early in both boot modes).
//!   The hard-link path needs nothing of the kind.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{
    chmodat, chownat, copy_file_range, fchmod, fchown, fstat, linkat, mkdirat, mknodat, openat,
    readlinkat, statat, symlinkat, syncfs, utimensat, AtFlags, FileType, Gid, Mode, OFlags, Stat,
    Timespec, Timestamps, Uid,
};
use rustix::io::Errno;

use crate::upgrade::keep::KeepList;

/// Deepest directory level the carry descends to (open descriptors stay bounded).
pub const MAX_DEPTH: usize = 256;

/// How non-directories are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Hard links; a copy only where the filesystem refuses the link.
    HardLinkWherePossible,
    /// Always recreate (tests of the copy path; filesystems without links).
    Copy,
}

/// What [`carry`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CarryReport {
    /// Paths (relative to the upper, `/`-separated) that matched a keep-list line.
    pub kept: Vec<PathBuf>,
    /// Entries created in the new upper (kept ones, everything below them, parents).
    pub entries: u64,
    /// Non-directories carried by hard link.
    pub linked: u64,
    /// Non-directories recreated.
    pub copied: u64,
    /// Mount points met under a kept path: skipped, not entered.
    pub mount_points_skipped: Vec<PathBuf>,
    /// Time spent finding and recreating entries.
    pub walk_took: std::time::Duration,
    /// Time spent in the final `syncfs`.
    pub sync_took: std::time::Duration,
}

pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// Device and mount id of a directory, and whether it is a mount root.
pub(crate) use crate::sys::wipe::{mount_identity, same_mount, MountIdentity};

/// The names in a directory, without `.` and `..`, sorted (a stable order).
pub(crate) fn sorted_names(dir: BorrowedFd<'_>) -> Result<Vec<CString>> {
    let mut names = crate::sys::dirfd::list_names(dir)?;
    names.sort();
    Ok(names)
}

pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Stat> {
    statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// A char device 0:0: an overlayfs whiteout.
pub(crate) fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Is this xattr the overlay's own (opaque, redirect, origin, whiteout...)?
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Where an entry is, for the xattr calls that have no `*at` form: a
/// directory descriptor, or a directory and a name (reached through
/// `/proc/self/fd`, with the `l*xattr` calls, so a symlink is not followed).
pub(crate) enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a CStr),
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name.to_bytes()));
    p
}

/// All xattrs of an entry as (name, value), sorted by name.
pub(crate) fn read_xattrs(target: &XattrTarget<'_>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut list = vec![0u8; 64 << 10];
    let n = match target {
        XattrTarget::Fd(fd) => rustix::fs::flistxattr(fd, &mut list[..]),
        XattrTarget::At(dir, name) => rustix::fs::llistxattr(proc_path(*dir, name), &mut list[..]),
    };
    let n = match n {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).context("list xattrs"),
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = CString::new(name).expect("split on NUL");
        let mut value = vec![0u8; 64 << 10];
        let len = match target {
            XattrTarget::Fd(fd) => rustix::fs::fgetxattr(fd, c_name.as_c_str(), &mut value[..]),
            XattrTarget::At(dir, n) => {
                rustix::fs::lgetxattr(proc_path(*dir, n), c_name.as_c_str(), &mut value[..])
            }
        };
        match len {
            Ok(len) => {
                value.truncate(len);
                out.push((name.to_vec(), value));
            }
            Err(Errno::NODATA) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("read xattr {}", String::from_utf8_lossy(name)))
            }
        }
    }
    out.sort();
    Ok(out)
}

fn write_xattrs(target: &XattrTarget<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    for (name, value) in xattrs {
        let c_name = CString::new(name.clone()).expect("xattr names have no NUL");
        let flags = rustix::fs::XattrFlags::empty();
        match target {
            XattrTarget::Fd(fd) => rustix::fs::fsetxattr(fd, c_name.as_c_str(), value, flags),
            XattrTarget::At(dir, n) => {
                rustix::fs::lsetxattr(proc_path(*dir, n), c_name.as_c_str(), value, flags)
            }
        }
        .with_context(|| format!("set xattr {}", String::from_utf8_lossy(name)))?;
    }
    Ok(())
}

fn timestamps(st: &Stat) -> Timestamps {
    #[allow(clippy::unnecessary_cast)] // the stat field types differ between targets
    let ts = |sec: i64, nsec: i64| Timespec {
        tv_sec: sec as _,
        tv_nsec: nsec as _,
    };
    #[allow(clippy::unnecessary_cast)]
    Timestamps {
        last_access: ts(st.st_atime as i64, st.st_atime_nsec as i64),
        last_modification: ts(st.st_mtime as i64, st.st_mtime_nsec as i64),
    }
}

fn owner(st: &Stat) -> (Option<Uid>, Option<Gid>) {
    (
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )
}

fn perm(st: &Stat) -> Mode {
    Mode::from_raw_mode(st.st_mode & 0o7777)
}

/// One directory on the way down: the old one, and the new one once created.
struct Level {
    old: OwnedFd,
    new: Option<OwnedFd>,
    name: CString,
    st: Stat,
}

struct Carrier<'a> {
    keep: &'a KeepList,
    mode: LinkMode,
    root_id: MountIdentity,
    new_root: BorrowedFd<'a>,
    report: CarryReport,
}

/// Recreate in `new_upper` (empty, on the same filesystem) every entry of
/// `old_upper` that the keep-list names, with everything below it and the
/// parents it needs, then `syncfs` so all of it is durable. Walks only the
/// directories on the way to a possible match: the cost follows what is
/// kept, not what the upper holds (unless a pattern starts with `/**`).
pub fn carry(
    old_upper: BorrowedFd<'_>,
    new_upper: BorrowedFd<'_>,
    keep: &KeepList,
    mode: LinkMode,
) -> Result<CarryReport> {
    let began = std::time::Instant::now();
    let root_id = mount_identity(old_upper).context("statx the old upper")?;
    let mut carrier = Carrier {
        keep,
        mode,
        root_id,
        new_root: new_upper,
        report: CarryReport::default(),
    };
    if !keep.is_empty() {
        let mut stack: Vec<Level> = Vec::new();
        let mut path: Vec<Vec<u8>> = Vec::new();
        carrier.search(old_upper, &mut stack, &mut path)?;
    }
    carrier.report.walk_took = began.elapsed();
    let sync_began = std::time::Instant::now();
    syncfs(new_upper).context("syncfs the new upper")?;
    carrier.report.sync_took = sync_began.elapsed();
    Ok(carrier.report)
}

fn show(path: &[Vec<u8>]) -> PathBuf {
    let mut p = PathBuf::new();
    for c in path {
        p.push(OsStr::from_bytes(c));
    }
    p
}

impl Carrier<'_> {
    /// Look for kept entries in the directory at the top of `stack` (or the root).
    fn search(
        &mut self,
        root: BorrowedFd<'_>,
        stack: &mut Vec<Level>,
        path: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let dir = stack.last().map_or(root, |l| l.old.as_fd());
        let names = sorted_names(dir).with_context(|| format!("list /{}", show(path).display()))?;
        for name in names {
            path.push(name.to_bytes().to_vec());
            let result = self.search_entry(root, stack, path, &name);
            path.pop();
            result?;
        }
        Ok(())
    }

    fn search_entry(
        &mut self,
        root: BorrowedFd<'_>,
        stack: &mut Vec<Level>,
        path: &mut Vec<Vec<u8>>,
        name: &CStr,
    ) -> Result<()> {
        let shown = format!("/{}", show(path).display());
        let where_ = || shown.clone();
        let dir = stack.last().map_or(root, |l| l.old.as_fd());
        let st = lstat_at(dir, name).with_context(|| format!("lstat {}", where_()))?;
        let comps: Vec<&[u8]> = path.iter().map(Vec::as_slice).collect();
        if self.keep.matching(&comps).is_some() {
            self.report.kept.push(show(path));
            let parent_new = self.ensure_parents(stack)?;
            let dir = stack.last().map_or(root, |l| l.old.as_fd());
            return self
                .copy_entry(dir, name, &st, parent_new.as_fd(), path)
                .with_context(|| format!("carry {}", where_()));
        }
        if file_type(&st) != FileType::Directory || !self.keep.may_match_below(&comps) {
            return Ok(());
        }
        if stack.len() >= MAX_DEPTH {
            bail!("{} is more than {MAX_DEPTH} levels deep", where_());
        }
        let fd = open_dir_at(dir, name).with_context(|| format!("open {}", where_()))?;
        if !same_mount(&self.root_id, &mount_identity(fd.as_fd())?) {
            self.report.mount_points_skipped.push(show(path));
            return Ok(());
        }
        stack.push(Level {
            old: fd,
            new: None,
            name: name.to_owned(),
            st,
        });
        let result = self.search(root, stack, path);
        let level = stack.pop().expect("pushed above");
        result?;
        if let Some(new) = level.new {
            // Children were added: the directory's times go back last.
            rustix::fs::futimens(&new, &timestamps(&level.st))
                .with_context(|| format!("set times of {}", where_()))?;
        }
        Ok(())
    }

    /// Create the new counterparts of the directories on the stack that do
    /// not exist yet; return the deepest one (the parent of the kept entry).
    fn ensure_parents(&mut self, stack: &mut [Level]) -> Result<OwnedFd> {
        for i in 0..stack.len() {
            if stack[i].new.is_some() {
                continue;
            }
            let parent = if i == 0 {
                self.new_root
            } else {
                stack[i - 1].new.as_ref().expect("made in order").as_fd()
            };
            let level = &stack[i];
            let fd = self.make_dir(parent, &level.name, &level.st, level.old.as_fd(), false)?;
            stack[i].new = Some(fd);
        }
        let deepest = stack.last().map_or(self.new_root, |l| {
            l.new.as_ref().expect("made above").as_fd()
        });
        rustix::io::dup(deepest).context("dup")
    }

    fn make_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        old: BorrowedFd<'_>,
        overlay_xattrs: bool,
    ) -> Result<OwnedFd> {
        mkdirat(parent, name, Mode::from_raw_mode(0o700))
            .with_context(|| format!("mkdir {name:?}"))?;
        self.report.entries += 1;
        let fd = open_dir_at(parent, name).with_context(|| format!("open new {name:?}"))?;
        let (uid, gid) = owner(st);
        fchown(&fd, uid, gid).context("chown")?;
        fchmod(&fd, perm(st)).context("chmod")?;
        let mut xattrs = read_xattrs(&XattrTarget::Fd(old))?;
        if !overlay_xattrs {
            xattrs.retain(|(n, _)| !is_overlay_xattr(n));
        }
        write_xattrs(&XattrTarget::Fd(fd.as_fd()), &xattrs)?;
        Ok(fd)
    }

    /// Carry one kept entry and everything below it.
    fn copy_entry(
        &mut self,
        old_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        new_dir: BorrowedFd<'_>,
        path: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        if file_type(st) != FileType::Directory {
            return self.copy_leaf(old_dir, name, st, new_dir);
        }
        if path.len() >= MAX_DEPTH {
            bail!("more than {MAX_DEPTH} levels deep");
        }
        let old = open_dir_at(old_dir, name).context("open")?;
        if !same_mount(&self.root_id, &mount_identity(old.as_fd())?) {
            self.report.mount_points_skipped.push(show(path));
            return Ok(());
        }
        let new = self.make_dir(new_dir, name, st, old.as_fd(), true)?;
        for child in sorted_names(old.as_fd())? {
            path.push(child.to_bytes().to_vec());
            let child_st = lstat_at(old.as_fd(), &child);
            let result = match child_st {
                Ok(cst) => self
                    .copy_entry(old.as_fd(), &child, &cst, new.as_fd(), path)
                    .with_context(|| format!("carry {child:?}")),
                Err(e) => Err(e).with_context(|| format!("lstat {child:?}")),
            };
            path.pop();
            result?;
        }
        rustix::fs::futimens(&new, &timestamps(st)).context("set times")?;
        Ok(())
    }

    fn copy_leaf(
        &mut self,
        old_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        new_dir: BorrowedFd<'_>,
    ) -> Result<()> {
        if st.st_dev != fstat(old_dir).context("fstat")?.st_dev {
            bail!("{name:?} is on another device");
        }
        if self.mode == LinkMode::HardLinkWherePossible {
            match linkat(old_dir, name, new_dir, name, AtFlags::empty()) {
                Ok(()) => {
                    self.report.entries += 1;
                    self.report.linked += 1;
                    return Ok(());
                }
                Err(Errno::MLINK) | Err(Errno::PERM) | Err(Errno::XDEV) | Err(Errno::NOTSUP) => {}
                Err(e) => return Err(e).context("link"),
            }
        }
        let kind = file_type(st);
        let (uid, gid) = owner(st);
        match kind {
            FileType::RegularFile => {
                let src = openat(
                    old_dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
                    Mode::empty(),
                )
                .context("open")?;
                let dst = openat(
                    new_dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .context("create")?;
                copy_contents(&src, &dst, st.st_size as u64)?;
                fchown(&dst, uid, gid).context("chown")?;
                fchmod(&dst, perm(st)).context("chmod")?;
                let xattrs = read_xattrs(&XattrTarget::Fd(src.as_fd()))?;
                write_xattrs(&XattrTarget::Fd(dst.as_fd()), &xattrs)?;
                rustix::fs::futimens(&dst, &timestamps(st)).context("set times")?;
            }
            FileType::Symlink => {
                let target = readlinkat(old_dir, name, Vec::new()).context("readlink")?;
                symlinkat(target.as_c_str(), new_dir, name).context("symlink")?;
                self.finish_node(old_dir, name, st, new_dir, false)?;
            }
            FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Fifo
            | FileType::Socket => {
                mknodat(new_dir, name, kind, perm(st), st.st_rdev).context("mknod")?;
                self.finish_node(old_dir, name, st, new_dir, true)?;
            }
            other => bail!("{name:?}: cannot carry a {other:?}"),
        }
        self.report.entries += 1;
        self.report.copied += 1;
        Ok(())
    }

    /// Owner, mode (not for symlinks), xattrs and times of a node made by name.
    fn finish_node(
        &mut self,
        old_dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        new_dir: BorrowedFd<'_>,
        set_mode: bool,
    ) -> Result<()> {
        let (uid, gid) = owner(st);
        chownat(new_dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW).context("chown")?;
        if set_mode {
            // The node was just made by us: not a symlink, so following is moot.
            chmodat(new_dir, name, perm(st), AtFlags::empty()).context("chmod")?;
        }
        let xattrs = read_xattrs(&XattrTarget::At(old_dir, name))?;
        write_xattrs(&XattrTarget::At(new_dir, name), &xattrs)?;
        utimensat(new_dir, name, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)
            .context("set times")?;
        Ok(())
    }
}

fn copy_contents(src: &OwnedFd, dst: &OwnedFd, size: u64) -> Result<()> {
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(1 << 30) as usize;
        match copy_file_range(src, None, dst, None, want) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = rustix::io::read(src, &mut buf).context("read")?;
                    if n == 0 {
                        return Ok(());
                    }
                    let mut rest = &buf[..n];
                    while !rest.is_empty() {
                        let w = rustix::io::write(dst, rest).context("write")?;
                        rest = &rest[w..];
                    }
                }
            }
            Err(e) => return Err(e).context("copy_file_range"),
        }
    }
    Ok(())
}
