//! The boot-attempt counter on the persistent upper: how many boots have
//! started since the running system last said `overlay-init mark-good`.
//!
//! On disk: `.overlay-init/bootcount` on the upper's filesystem (next to
//! `upper/` and `work/`, so the overlay never shows it), one line
//! `attempts=N\n`. It is written durably at the least cost
//! (`sys::counterfile`: created, or overwritten in place, with one fsync or
//! fdatasync; else temporary file, fsync, rename, fsync of the directory), so a
//! power cut leaves the old or the new count.
//! A missing file is 0; `mark-good` removes it (durably).

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};

use crate::sys::dirfd;

use crate::layout::{BOOTCOUNT_C as COUNTER, STATE_DIR_C as STATE_DIR};
const DIR_MODE: u32 = 0o700;

/// The counter's path on the upper's filesystem.
pub fn counter_path(upper_root: &Path) -> std::path::PathBuf {
    crate::layout::bootcount_path(upper_root)
}

/// The file's contents for a count.
pub fn render(attempts: u32) -> Vec<u8> {
    format!("attempts={attempts}\n").into_bytes()
}

/// Parse the file's contents. Anything but `attempts=N` (optionally followed by
/// one newline) is an error naming what was found.
pub fn parse(contents: &[u8]) -> Result<u32, String> {
    let text =
        std::str::from_utf8(contents).map_err(|_| "the counter file is not text".to_string())?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let digits = line
        .strip_prefix("attempts=")
        .ok_or_else(|| format!("expected attempts=N, found {:?}", truncate(line)))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected attempts=N, found {:?}", truncate(line)));
    }
    digits
        .parse()
        .map_err(|_| format!("count {:?} is too large", truncate(digits)))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The count after one more boot attempt (saturating: a counter never wraps to 0).
pub fn next(attempts: u32) -> u32 {
    attempts.saturating_add(1)
}

/// Read the counter: 0 when there is none. A corrupt file counts as 0 (logged):
/// a garbled counter must not lock a device into failsafe, and the next
/// increment rewrites it.
pub fn read(upper_root: &Path) -> Result<u32> {
    let root = dirfd::open_dir(upper_root)?;
    let state = match dirfd::open_dir_at(root.as_fd(), STATE_DIR) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(0),
        // Not a directory (a file, a symlink): corrupt state, repaired by the
        // "record boot" step (crate::staterepair); it holds no count.
        Err(e @ (rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)) => {
            log::warn!(
                "{} is not a directory ({e}); counting from 0",
                crate::layout::state_dir(upper_root).display()
            );
            return Ok(0);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("open {}", crate::layout::state_dir(upper_root).display())
            })
        }
    };
    let path = counter_path(upper_root);
    let contents = match dirfd::read_small_file(state.as_fd(), COUNTER) {
        Err(e) if dirfd::is_not_regular(&e) => {
            log::warn!("{}: {e:#}; counting from 0", path.display());
            return Ok(0);
        }
        other => other.with_context(|| format!("read {}", path.display()))?,
    };
    match contents {
        None => Ok(0),
        Some(bytes) => match parse(&bytes) {
            Ok(n) => Ok(n),
            Err(e) => {
                log::warn!("{}: {e}; counting from 0", path.display());
                Ok(0)
            }
        },
    }
}

/// Count one more boot attempt, durably; returns the new count.
pub fn increment(upper_root: &Path) -> Result<u32> {
    let current = read(upper_root)?;
    let new = next(current);
    let path = counter_path(upper_root);
    let root = dirfd::open_dir(upper_root)?;
    let (state, created) = dirfd::ensure_dir_at(root.as_fd(), STATE_DIR, DIR_MODE)
        .with_context(|| format!("create {}", crate::layout::state_dir(upper_root).display()))?;
    if created {
        dirfd::fsync_dir(root.as_fd(), "upper root")?;
    }
    // The cheap durable ways (create, or overwrite in place), else the general one.
    let contents = render(new);
    let written = crate::sys::counterfile::write_small(state.as_fd(), COUNTER, &contents)
        .with_context(|| format!("write {}", path.display()))?;
    if !written {
        dirfd::write_durably(state.as_fd(), COUNTER, &contents)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(new)
}

/// `overlay-init mark-good`: this boot worked, forget the attempts. Returns the
/// count that was cleared.
pub fn clear(upper_root: &Path) -> Result<u32> {
    let cleared = read(upper_root)?;
    let root = dirfd::open_dir(upper_root)?;
    let state = match dirfd::open_dir_at(root.as_fd(), STATE_DIR) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(cleared),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("open {}", crate::layout::state_dir(upper_root).display())
            })
        }
    };
    let path = counter_path(upper_root);
    dirfd::remove_durably(state.as_fd(), COUNTER).map_err(|e| {
        let read_only = e
            .root_cause()
            .downcast_ref::<rustix::io::Errno>()
            .is_some_and(|errno| *errno == rustix::io::Errno::ROFS);
        if read_only {
            e.context(format!(
                "remove {}: {} is read-only (a failsafe boot mounts it so); \
                 `mount -o remount,rw {}` first",
                path.display(),
                upper_root.display(),
                upper_root.display()
            ))
        } else {
            e.context(format!("remove {}", path.display()))
        }
    })?;
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_round_trips() {
        for n in [0, 1, 3, u32::MAX] {
            assert_eq!(parse(&render(n)), Ok(n));
        }
        assert_eq!(render(2), b"attempts=2\n");
        assert_eq!(parse(b"attempts=5"), Ok(5));
    }

    #[test]
    fn garbage_is_an_error_that_shows_it() {
        for bad in [
            &b""[..],
            b"\n",
            b"attempts=\n",
            b"attempts=-1\n",
            b"attempts=+1\n",
            b"attempts=1\n\n",
            b"attempts= 1\n",
            b"attempts=99999999999\n",
            b"\xff\xfe",
            b"count=1\n",
            b"\0\0\0\0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(b"count=1\n").unwrap_err().contains("count=1"));
    }

    #[test]
    fn next_saturates() {
        assert_eq!(next(0), 1);
        assert_eq!(next(u32::MAX), u32::MAX);
    }

    #[test]
    fn read_increment_clear_on_a_directory() {
        let dir = std::env::temp_dir().join(format!("ovl-bootcount-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), 0);
        assert_eq!(clear(&dir).unwrap(), 0);
        assert_eq!(increment(&dir).unwrap(), 1);
        assert_eq!(increment(&dir).unwrap(), 2);
        assert_eq!(read(&dir).unwrap(), 2);
        assert_eq!(
            std::fs::read(counter_path(&dir)).unwrap(),
            b"attempts=2\n".to_vec()
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.join(".overlay-init"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("bootcount")]);
        assert_eq!(clear(&dir).unwrap(), 2);
        assert_eq!(read(&dir).unwrap(), 0);
        assert!(!counter_path(&dir).exists());
        // A corrupt counter reads as 0 and the next increment repairs it.
        std::fs::write(counter_path(&dir), b"garbage").unwrap();
        assert_eq!(read(&dir).unwrap(), 0);
        assert_eq!(increment(&dir).unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
