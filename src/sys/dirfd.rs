//! Directory-fd helpers and the durable directory operations the factory
//! reset and the boot counter are built from: open without following
//! symlinks, fsync a directory, write/replace/remove a small file durably,
//! swap two directories atomically.

use std::ffi::{CStr, CString};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{
    fstat, fsync, mkdirat, openat, renameat_with, statat, unlinkat, AtFlags, Dir, FileType, Mode,
    OFlags, RenameFlags, CWD,
};
use rustix::io::Errno;

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
///
/// The temporary name is unlinked first and created with `O_EXCL`: whatever
/// sat there (a hard link to another file, a symlink, a FIFO) is never
/// written through, only removed.
pub fn write_durably(dir: BorrowedFd<'_>, name: &CStr, contents: &[u8]) -> Result<()> {
    let mut tmp = name.to_bytes().to_vec();
    tmp.extend_from_slice(b".tmp");
    let tmp = CString::new(tmp).expect("a CStr plus a suffix has no NUL");
    match unlinkat(dir, tmp.as_c_str(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("remove a stale {tmp:?}")),
    }
    let flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK
        | OFlags::CLOEXEC;
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
///
/// Opened `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC` and checked with `fstat` to be a
/// regular file before anything is read: a FIFO, socket, device node or
/// directory under that name is an error ([`NotRegular`] in the chain), never
/// a read that blocks PID 1.
pub fn read_small_file(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<Vec<u8>>> {
    let file = match openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(NotRegular("a symlink").into()),
        Err(e) => return Err(e).with_context(|| format!("open {name:?}")),
    };
    let st = fstat(&file).with_context(|| format!("stat {name:?}"))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(NotRegular(file_type_name(kind)).into());
    }
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

/// A state file that is not a regular file (see [`read_small_file`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRegular(pub &'static str);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a regular file but {}", self.0)
    }
}

impl std::error::Error for NotRegular {}

/// Is this error (anywhere in its chain) a state file of the wrong type?
pub fn is_not_regular(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<NotRegular>().is_some())
}

/// "a directory", "a FIFO", ... for messages.
pub fn file_type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "an unknown kind of file",
    }
}

/// The real path of `path` resolved inside the directory `root` as if `root`
/// were `/` (`openat2` with `RESOLVE_IN_ROOT`): `..` and symlinks, absolute
/// or relative, never leave it. For files a command line names on a
/// filesystem (`ovl.image=`, `ovl.lower=` image files).
pub fn resolve_in_root(root: &Path, path: &str) -> Result<std::path::PathBuf> {
    let root_fd = openat(CWD, root, DIR_FLAGS, Mode::empty())
        .with_context(|| format!("open {}", root.display()))?;
    let fd = rustix::fs::openat2(
        &root_fd,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    )
    .with_context(|| format!("{path} on {}", root.display()))?;
    let real = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        rustix::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .with_context(|| format!("where {path} on {} is", root.display()))?;
    let real_root = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        rustix::fd::AsRawFd::as_raw_fd(&root_fd)
    ))
    .with_context(|| format!("where {} is", root.display()))?;
    if !real.starts_with(&real_root) {
        bail!(
            "{path} resolves to {}, outside {}",
            real.display(),
            root.display()
        );
    }
    Ok(real)
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

pub(crate) fn is_dot_or_dotdot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn scratch(name: &str) -> (std::path::PathBuf, OwnedFd) {
        let dir = std::env::temp_dir().join(format!("ovl-dirfd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fd = open_dir(&dir).unwrap();
        (dir, fd)
    }

    /// Runs `f` in a thread; a call that blocks fails the test instead of hanging it.
    fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the call blocked (a FIFO opened without O_NONBLOCK?)")
    }

    #[test]
    fn read_small_file_refuses_a_fifo_without_blocking() {
        let (dir, _) = scratch("fifo");
        rustix::fs::mknodat(
            CWD,
            dir.join("bootcount"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let d = dir.clone();
        let result = within_seconds(move || {
            let fd = open_dir(&d).unwrap();
            read_small_file(fd.as_fd(), c"bootcount").map_err(|e| format!("{e:#}"))
        });
        let err = result.unwrap_err();
        assert!(err.contains("not a regular file but a FIFO"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_small_file_refuses_a_directory_and_a_symlink() {
        let (dir, fd) = scratch("kinds");
        std::fs::create_dir(dir.join("reset-request")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("bootcount")).unwrap();
        let e = read_small_file(fd.as_fd(), c"reset-request").unwrap_err();
        assert!(is_not_regular(&e), "{e:#}");
        let e = read_small_file(fd.as_fd(), c"bootcount").unwrap_err();
        assert!(is_not_regular(&e), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_durably_never_writes_through_a_hard_linked_tmp() {
        let (dir, fd) = scratch("hardlink");
        let victim = dir.join("shadow");
        std::fs::write(&victim, "root:secret\n").unwrap();
        std::fs::hard_link(&victim, dir.join("bootcount.tmp")).unwrap();
        write_durably(fd.as_fd(), c"bootcount", b"attempts=1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
        assert_eq!(
            std::fs::read(dir.join("bootcount")).unwrap(),
            b"attempts=1\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolve_in_root_never_leaves_the_root() {
        let (dir, _) = scratch("inroot");
        let host = dir.join("host");
        std::fs::create_dir_all(host.join("images")).unwrap();
        std::fs::write(host.join("images/a.sqsh"), "inside").unwrap();
        std::fs::write(dir.join("secret.sqsh"), "outside").unwrap();
        std::fs::write(host.join("secret.sqsh"), "decoy").unwrap();
        std::os::unix::fs::symlink("/secret.sqsh", host.join("images/abs")).unwrap();
        std::os::unix::fs::symlink("../../secret.sqsh", host.join("images/rel")).unwrap();
        let read = |p: &str| std::fs::read_to_string(resolve_in_root(&host, p).unwrap()).unwrap();
        assert_eq!(read("/images/a.sqsh"), "inside");
        // `..` and symlinks stay inside: they land on the host's own /secret.sqsh.
        assert_eq!(read("/../secret.sqsh"), "decoy");
        assert_eq!(read("/images/abs"), "decoy");
        assert_eq!(read("/images/rel"), "decoy");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_durably_does_not_block_on_a_fifo_tmp() {
        let (dir, _) = scratch("fifotmp");
        rustix::fs::mknodat(
            CWD,
            dir.join("state.tmp"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let d = dir.clone();
        within_seconds(move || {
            let fd = open_dir(&d).unwrap();
            write_durably(fd.as_fd(), c"state", b"x").unwrap()
        });
        assert_eq!(std::fs::read(dir.join("state")).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
