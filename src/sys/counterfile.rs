//! A small file rewritten once per boot (the boot counter), made durable at the
//! least cost a power cut allows.
//!
//! The general way, a temporary file, fsync, rename, fsync of the directory
//! (`wipe::write_durably`), costs two journal commits on ext4. A counter does not
//! need it in its two common cases (`benches/bootcount/run` measures them):
//!
//! - **absent** (the first boot after `mark-good`, which removes it): create it
//!   with `O_EXCL`, write, fsync, fsync the directory: one commit and a flush. A
//!   power cut leaves no file, an empty or a partly written one, or the new one;
//!   all but the last read as 0 (the parser rejects the rest, and a rejected
//!   counter counts as 0), which is what the absent file meant.
//! - **present and no longer than the new contents** (a count only grows): write
//!   over it from offset 0 and `fdatasync`: the data block and a flush, no
//!   journal commit when the size stays the same (a count from 9 to 10 grows the
//!   size: one commit). The contents fit in one sector, which a disk writes
//!   whole or not at all, so a power cut leaves the old count or the new one; a
//!   longer new count cut short of its new size reads as a valid prefix
//!   (`attempts=10` without its newline).
//!
//! Anything else (a longer file, a symlink, not a regular file, a file with
//! more than one hard link) is left to the
//! general way: [`write_small`] returns `Ok(false)`.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use anyhow::{Context, Result};
use rustix::fs::{fdatasync, fstat, fsync, openat, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Write `contents` (at most a sector: 512 bytes) to `dir/name` durably, by one
/// of the two cheap ways above. `Ok(false)`: neither applies, nothing was
/// written; use the general way.
pub fn write_small(dir: BorrowedFd<'_>, name: &CStr, contents: &[u8]) -> Result<bool> {
    if contents.len() > 512 {
        return Ok(false);
    }
    let create = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK
        | OFlags::CLOEXEC;
    match openat(dir, name, create, Mode::from_raw_mode(0o644)) {
        Ok(file) => {
            write_all_at_start(&file, contents, name)?;
            fsync(&file).with_context(|| format!("fsync {name:?}"))?;
            fsync(dir).with_context(|| format!("fsync the directory holding {name:?}"))?;
            return Ok(true);
        }
        Err(Errno::EXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("create {name:?}")),
    }
    let file = match openat(
        dir,
        name,
        // O_NONBLOCK: a FIFO under the counter's name must not block PID 1.
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(file) => file,
        // A symlink (ELOOP), a directory, ...: the general way replaces or reports it.
        Err(_) => return Ok(false),
    };
    let st = fstat(&file).with_context(|| format!("stat {name:?}"))?;
    // A hard link (nlink > 1) would be written through to its other names
    // (a counter linked to upper/etc/shadow): the general way replaces it.
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_nlink != 1
        || st.st_size as u64 > contents.len() as u64
    {
        return Ok(false);
    }
    write_all_at_start(&file, contents, name)?;
    fdatasync(&file).with_context(|| format!("fdatasync {name:?}"))?;
    Ok(true)
}

fn write_all_at_start(file: &std::os::fd::OwnedFd, contents: &[u8], name: &CStr) -> Result<()> {
    let mut done = 0;
    while done < contents.len() {
        let n = rustix::io::pwrite(file, &contents[done..], done as u64)
            .with_context(|| format!("write {name:?}"))?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn scratch(name: &str) -> (std::path::PathBuf, std::os::fd::OwnedFd) {
        let dir =
            std::env::temp_dir().join(format!("ovl-counterfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fd = rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        (dir, fd)
    }

    #[test]
    fn creates_then_overwrites_in_place() {
        let (dir, fd) = scratch("cheap");
        assert!(write_small(fd.as_fd(), c"count", b"attempts=1\n").unwrap());
        assert_eq!(std::fs::read(dir.join("count")).unwrap(), b"attempts=1\n");
        let inode = std::fs::metadata(dir.join("count")).unwrap();
        assert!(write_small(fd.as_fd(), c"count", b"attempts=2\n").unwrap());
        assert!(write_small(fd.as_fd(), c"count", b"attempts=10\n").unwrap());
        assert_eq!(std::fs::read(dir.join("count")).unwrap(), b"attempts=10\n");
        // In place: the same file, not a replacement.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(dir.join("count")).unwrap().ino(),
            inode.ino()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leaves_what_it_cannot_overwrite_whole_to_the_general_way() {
        let (dir, fd) = scratch("general");
        // Longer than the new contents: an overwrite would leave a tail.
        std::fs::write(dir.join("long"), b"attempts=123456\n").unwrap();
        assert!(!write_small(fd.as_fd(), c"long", b"attempts=1\n").unwrap());
        assert_eq!(
            std::fs::read(dir.join("long")).unwrap(),
            b"attempts=123456\n"
        );
        // A symlink is never followed.
        std::os::unix::fs::symlink("/nonexistent-target", dir.join("link")).unwrap();
        assert!(!write_small(fd.as_fd(), c"link", b"attempts=1\n").unwrap());
        assert!(std::fs::symlink_metadata(dir.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A directory is not a counter.
        std::fs::create_dir(dir.join("dir")).unwrap();
        assert!(!write_small(fd.as_fd(), c"dir", b"attempts=1\n").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn never_writes_through_a_hard_link() {
        let (dir, fd) = scratch("hardlink");
        let victim = dir.join("shadow");
        // Shorter than the new count, so only the link count can stop the overwrite.
        std::fs::write(&victim, b"root:x\n").unwrap();
        std::fs::hard_link(&victim, dir.join("count")).unwrap();
        assert!(!write_small(fd.as_fd(), c"count", b"attempts=1\n").unwrap());
        assert_eq!(std::fs::read(&victim).unwrap(), b"root:x\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
