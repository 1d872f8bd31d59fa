//! Comparing an (offline) upper with the lowers it will be mounted over: the
//! entries that shadow a path the lowers have (`ovl.upgrade=keep` reports
//! them), and the entries that only pin old metadata (`ovl.upgrade=prune`
//! removes them). Also the merged-view lookup of the keep-list file.
//!
//! Lowers are given topmost first, as directory descriptors of their mounted
//! roots. A name is looked up the way overlayfs merges: layer by layer from the
//! top; the first non-directory ends the search; directories merge; an opaque
//! upper directory (`trusted.overlay.opaque=y`) hides every lower below it.
//! The walk never follows a symlink and never enters another mount.

use std::ffi::{CStr, OsStr};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{openat, unlinkat, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::carry::{
    file_type, is_overlay_xattr, is_whiteout, lstat_at, mount_identity, open_dir_at, read_xattrs,
    same_mount, sorted_names, MountIdentity, XattrTarget, MAX_DEPTH,
};

/// What kind of upper entry shadows a lower path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShadowKind {
    /// A regular file over the lower's entry.
    File,
    Symlink,
    /// A whiteout hiding the lower's entry (a deletion).
    Whiteout,
    /// An opaque directory, or a directory over a lower non-directory:
    /// the lower's contents there are hidden.
    OpaqueDir,
    /// A device node, FIFO or socket.
    Other,
}

impl ShadowKind {
    pub fn name(self) -> &'static str {
        match self {
            ShadowKind::File => "file",
            ShadowKind::Symlink => "symlink",
            ShadowKind::Whiteout => "whiteout",
            ShadowKind::OpaqueDir => "opaque-dir",
            ShadowKind::Other => "other",
        }
    }
}

/// An upper entry that hides what the lowers have at the same path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shadowed {
    /// Absolute path in the merged root, raw bytes (`/usr/bin/tool`).
    pub path: Vec<u8>,
    pub kind: ShadowKind,
}

/// `/run/overlay-init/shadowed`: one `KIND PATH` line per entry, sorted by
/// path; bytes outside printable ASCII, and `\`, written as `\xHH`.
pub fn render_shadowed(list: &[Shadowed]) -> String {
    let mut out = String::new();
    for s in list {
        let _ = write!(out, "{} ", s.kind.name());
        for &b in &s.path {
            if (0x21..=0x7e).contains(&b) && b != b'\\' {
                out.push(b as char);
            } else {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
        out.push('\n');
    }
    out
}

/// What [`prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Upper copies identical to the lower's (mode, owner, xattrs, content).
    pub identical_removed: Vec<Vec<u8>>,
    /// Whiteouts of paths no lower has.
    pub stale_whiteouts_removed: Vec<Vec<u8>>,
    /// What is left shadowing the lowers.
    pub shadowed: Vec<Shadowed>,
    /// Mount points met in the upper: not entered.
    pub mount_points_skipped: Vec<PathBuf>,
}

/// The lowers' view of one directory: for each lower (topmost first), its
/// directory at this path if it has one and no layer above hides it.
struct LowerDirs(Vec<Option<OwnedFd>>);

/// What the lowers have at a name in a merged directory.
struct LowerHit {
    /// Index of the topmost lower that has the name.
    layer: usize,
    st: Stat,
}

impl LowerDirs {
    fn lookup(&self, name: &CStr) -> Result<Option<LowerHit>> {
        for (layer, dir) in self.0.iter().enumerate() {
            let Some(dir) = dir else { continue };
            match lstat_at(dir.as_fd(), name) {
                Ok(st) => return Ok(Some(LowerHit { layer, st })),
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => {}
                Err(e) => return Err(e).with_context(|| format!("lstat {name:?} in a lower")),
            }
        }
        Ok(None)
    }

    /// The lowers' directories for `name`, merged down to the first
    /// non-directory.
    fn descend(&self, name: &CStr) -> Result<LowerDirs> {
        let mut out = Vec::with_capacity(self.0.len());
        let mut hidden = false;
        for dir in &self.0 {
            let next = match (dir, hidden) {
                (Some(dir), false) => match lstat_at(dir.as_fd(), name) {
                    Ok(st) if file_type(&st) == FileType::Directory => Some(
                        open_dir_at(dir.as_fd(), name)
                            .with_context(|| format!("open {name:?} in a lower"))?,
                    ),
                    Ok(_) => {
                        hidden = true;
                        None
                    }
                    Err(Errno::NOENT) | Err(Errno::NOTDIR) => None,
                    Err(e) => return Err(e).with_context(|| format!("lstat {name:?} in a lower")),
                },
                _ => None,
            };
            out.push(next);
        }
        Ok(LowerDirs(out))
    }

    fn none(&self) -> LowerDirs {
        LowerDirs(self.0.iter().map(|_| None).collect())
    }

    fn any(&self) -> bool {
        self.0.iter().any(Option::is_some)
    }
}

fn dup_all(lowers: &[BorrowedFd<'_>]) -> Result<LowerDirs> {
    Ok(LowerDirs(
        lowers
            .iter()
            .map(|l| rustix::io::dup(l).map(Some))
            .collect::<rustix::io::Result<_>>()
            .context("dup a lower")?,
    ))
}

fn is_opaque(dir: BorrowedFd<'_>) -> Result<bool> {
    Ok(read_xattrs(&XattrTarget::Fd(dir))?
        .iter()
        .any(|(n, v)| (n == b"trusted.overlay.opaque" || n == b"user.overlay.opaque") && v == b"y"))
}

fn shadow_kind(st: &Stat) -> ShadowKind {
    match file_type(st) {
        FileType::RegularFile => ShadowKind::File,
        FileType::Symlink => ShadowKind::Symlink,
        FileType::Directory => ShadowKind::OpaqueDir,
        _ if is_whiteout(st) => ShadowKind::Whiteout,
        _ => ShadowKind::Other,
    }
}

/// The upper entries that shadow a path the lowers have (see [`Shadowed`]),
/// sorted by path. Reads only; the upper is not changed.
pub fn list_shadowed(upper: BorrowedFd<'_>, lowers: &[BorrowedFd<'_>]) -> Result<Vec<Shadowed>> {
    Ok(walk(upper, lowers, false)?.shadowed)
}

/// Remove the upper entries that only pin old metadata: non-directories
/// identical to the lowers' entry (same type, mode, owner, xattrs other than
/// the overlay's, and content or link target; timestamps are not compared),
/// and whiteouts of paths no lower has. Each removal leaves what the overlay
/// shows unchanged (but for timestamps), so a power cut in the middle leaves a
/// valid upper; the caller `syncfs`es at the end. Returns what was removed
/// and what still shadows the lowers.
pub fn prune(upper: BorrowedFd<'_>, lowers: &[BorrowedFd<'_>]) -> Result<PruneReport> {
    let report = walk(upper, lowers, true)?;
    rustix::fs::syncfs(upper).context("syncfs the upper")?;
    Ok(report)
}

struct Walker<'a> {
    prune: bool,
    root_id: MountIdentity,
    lowers: &'a [BorrowedFd<'a>],
    report: PruneReport,
}

fn walk(upper: BorrowedFd<'_>, lowers: &[BorrowedFd<'_>], prune: bool) -> Result<PruneReport> {
    let mut w = Walker {
        prune,
        root_id: mount_identity(upper).context("statx the upper")?,
        lowers,
        report: PruneReport::default(),
    };
    let lower_dirs = dup_all(lowers)?;
    let mut path = Vec::new();
    w.dir(upper, &lower_dirs, &mut path)?;
    w.report.shadowed.sort();
    Ok(w.report)
}

fn abs(path: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in path {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

impl Walker<'_> {
    fn dir(
        &mut self,
        dir: BorrowedFd<'_>,
        lower: &LowerDirs,
        path: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        if path.len() >= MAX_DEPTH {
            anyhow::bail!("{} is too deep", String::from_utf8_lossy(&abs(path)));
        }
        for name in sorted_names(dir)? {
            path.push(name.to_bytes().to_vec());
            let r = self.entry(dir, &name, lower, path);
            path.pop();
            r?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        lower: &LowerDirs,
        path: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let show = || String::from_utf8_lossy(&abs(path)).into_owned();
        let st = lstat_at(dir, name).with_context(|| format!("lstat {}", show()))?;
        let hit = if lower.any() {
            lower.lookup(name)?
        } else {
            None
        };
        if file_type(&st) == FileType::Directory {
            let fd = open_dir_at(dir, name).with_context(|| format!("open {}", show()))?;
            if !same_mount(&self.root_id, &mount_identity(fd.as_fd())?) {
                self.report
                    .mount_points_skipped
                    .push(PathBuf::from(OsStr::from_bytes(&abs(path))));
                return Ok(());
            }
            let opaque = is_opaque(fd.as_fd())?;
            let below = match &hit {
                Some(h) if opaque || file_type(&h.st) != FileType::Directory => {
                    self.report.shadowed.push(Shadowed {
                        path: abs(path),
                        kind: ShadowKind::OpaqueDir,
                    });
                    lower.none()
                }
                Some(_) => lower.descend(name)?,
                None => lower.none(),
            };
            return self.dir(fd.as_fd(), &below, path);
        }
        let Some(hit) = hit else {
            if self.prune && is_whiteout(&st) {
                remove(dir, name).with_context(|| format!("remove whiteout {}", show()))?;
                self.report.stale_whiteouts_removed.push(abs(path));
            }
            return Ok(());
        };
        if self.prune && !is_whiteout(&st) {
            let lower_dir = self.lower_parent(lower, hit.layer);
            if identical(dir, name, &st, lower_dir, &hit.st)
                .with_context(|| format!("compare {} with the lower", show()))?
            {
                remove(dir, name).with_context(|| format!("remove {}", show()))?;
                self.report.identical_removed.push(abs(path));
                return Ok(());
            }
        }
        self.report.shadowed.push(Shadowed {
            path: abs(path),
            kind: shadow_kind(&st),
        });
        Ok(())
    }

    fn lower_parent<'l>(&self, lower: &'l LowerDirs, layer: usize) -> BorrowedFd<'l> {
        let _ = self.lowers;
        lower.0[layer]
            .as_ref()
            .expect("lookup found it there")
            .as_fd()
    }
}

fn remove(dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    match unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e).context("unlink"),
    }
}

fn non_overlay_xattrs(t: &XattrTarget<'_>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut x = read_xattrs(t)?;
    x.retain(|(n, _)| !is_overlay_xattr(n));
    Ok(x)
}

/// Same type, mode, owner, xattrs and content (or link target)?
fn identical(
    udir: BorrowedFd<'_>,
    name: &CStr,
    ust: &Stat,
    ldir: BorrowedFd<'_>,
    lst: &Stat,
) -> Result<bool> {
    if ust.st_mode != lst.st_mode || ust.st_uid != lst.st_uid || ust.st_gid != lst.st_gid {
        return Ok(false);
    }
    match file_type(ust) {
        FileType::RegularFile => {
            if ust.st_size != lst.st_size {
                return Ok(false);
            }
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
            let u = openat(udir, name, flags, Mode::empty()).context("open the upper copy")?;
            let l = openat(ldir, name, flags, Mode::empty()).context("open the lower file")?;
            if non_overlay_xattrs(&XattrTarget::Fd(u.as_fd()))?
                != non_overlay_xattrs(&XattrTarget::Fd(l.as_fd()))?
            {
                return Ok(false);
            }
            same_content(&u, &l)
        }
        FileType::Symlink => {
            let a = rustix::fs::readlinkat(udir, name, Vec::new()).context("readlink")?;
            let b = rustix::fs::readlinkat(ldir, name, Vec::new()).context("readlink")?;
            Ok(a == b
                && non_overlay_xattrs(&XattrTarget::At(udir, name))?
                    == non_overlay_xattrs(&XattrTarget::At(ldir, name))?)
        }
        // Devices, FIFOs, sockets: the same node if the same rdev.
        _ => Ok(ust.st_rdev == lst.st_rdev),
    }
}

fn same_content(a: &OwnedFd, b: &OwnedFd) -> Result<bool> {
    let mut x = vec![0u8; 64 << 10];
    let mut y = vec![0u8; 64 << 10];
    loop {
        let n = read_full(a, &mut x)?;
        let m = read_full(b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = rustix::io::read(fd, &mut buf[got..]).context("read")?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Read a file of the merged view from the offline layers: the upper's copy if
/// it has one, nothing if the upper deleted it (a whiteout, or an opaque
/// directory on the way), else the topmost lower's. `path` is relative
/// (`etc/overlay-init/keep`). Symlinks are not followed (a symlinked keep-list
/// reads as absent). At most 1 MiB is read.
pub fn read_merged_file(
    upper: BorrowedFd<'_>,
    lowers: &[BorrowedFd<'_>],
    path: &[u8],
) -> Result<Option<Vec<u8>>> {
    let comps = crate::upgrade::keep::components(path);
    let Some((last, parents)) = comps.split_last() else {
        return Ok(None);
    };
    let mut upper_dir = Some(rustix::io::dup(upper).context("dup")?);
    let mut lower = dup_all(lowers)?;
    for comp in parents {
        let name = std::ffi::CString::new(*comp).context("NUL in a path")?;
        if let Some(u) = upper_dir.take() {
            match lstat_at(u.as_fd(), &name) {
                Ok(st) if file_type(&st) == FileType::Directory => {
                    let fd = open_dir_at(u.as_fd(), &name).context("open")?;
                    if is_opaque(fd.as_fd())? {
                        lower = lower.none();
                    }
                    upper_dir = Some(fd);
                }
                // A whiteout or a non-directory: the path is gone from the view.
                Ok(_) => return Ok(None),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e).context("lstat in the upper"),
            }
        }
        lower = lower.descend(&name)?;
    }
    let name = std::ffi::CString::new(*last).context("NUL in a path")?;
    if let Some(u) = &upper_dir {
        match lstat_at(u.as_fd(), &name) {
            Ok(st) if file_type(&st) == FileType::RegularFile => {
                return read_file(u.as_fd(), &name).map(Some)
            }
            Ok(_) => return Ok(None),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e).context("lstat in the upper"),
        }
    }
    match lower.lookup(&name)? {
        Some(hit) if file_type(&hit.st) == FileType::RegularFile => {
            let dir = lower.0[hit.layer].as_ref().expect("found there");
            read_file(dir.as_fd(), &name).map(Some)
        }
        _ => Ok(None),
    }
}

fn read_file(dir: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>> {
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .with_context(|| format!("open {name:?}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let n = read_full(&fd, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadowed_list_escapes_odd_bytes() {
        let list = [
            Shadowed {
                path: b"/usr/bin/tool".to_vec(),
                kind: ShadowKind::File,
            },
            Shadowed {
                path: b"/etc/a b\n\\\xff".to_vec(),
                kind: ShadowKind::Whiteout,
            },
        ];
        assert_eq!(
            render_shadowed(&list),
            "file /usr/bin/tool\nwhiteout /etc/a\\x20b\\x0a\\x5c\\xff\n"
        );
    }
}
