//! overlay-init owns `.overlay-init/` on the upper's filesystem: an entry of
//! the wrong type there (`.overlay-init` itself a file or a symlink,
//! `reset-request` or `bootcount` a directory, a FIFO, a device node, a
//! symlink; `trash` not a directory) is corrupt state. It is moved aside into
//! the trash (renamed, never followed or opened), with a warning, and the boot
//! goes on with the persistent upper: odd state is repaired, not obeyed on
//! every boot. The trash is removed in the background like a reset's.
//!
//! Every rename is made durable before the next; a power cut in between
//! leaves either the odd entry (repaired again next boot) or the repair done,
//! and at worst an empty `.overlay-init.repair-*` directory at the top of the
//! upper's filesystem, outside the overlay's view.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rustix::fs::{renameat_with, statat, AtFlags, FileType, RenameFlags};
use rustix::io::Errno;

use crate::layout::{
    BOOTCOUNT_C, RESET_REQUEST_C, STATE_DIR, STATE_DIR_C, TRASH, TRASH_C, WORK, WORK_C,
};
use crate::sys::dirfd;

const DIR_MODE: u32 = 0o700;

/// The entries of `.overlay-init/` overlay-init reads, and the type each must have.
pub const EXPECTED: [(&CStr, FileType); 3] = [
    (RESET_REQUEST_C, FileType::RegularFile),
    (BOOTCOUNT_C, FileType::RegularFile),
    (TRASH_C, FileType::Directory),
];

/// Repair `.overlay-init/` on the upper's filesystem at `upper_fs` (mounted
/// read-write). Returns one line per entry moved aside.
pub fn repair(upper_fs: &Path) -> Result<Vec<String>> {
    let root = dirfd::open_dir(upper_fs)?;
    let mut moved = Vec::new();
    let stamp = stamp();
    match kind_at(root.as_fd(), STATE_DIR_C)? {
        None => return Ok(moved),
        Some(FileType::Directory) => {}
        Some(kind) => {
            replace_state_dir(root.as_fd(), &stamp)?;
            moved.push(format!(
                "{STATE_DIR} was {}: moved to {STATE_DIR}/{TRASH}/{stamp}/",
                dirfd::file_type_name(kind)
            ));
        }
    }
    let state = dirfd::open_dir_at(root.as_fd(), STATE_DIR_C)
        .with_context(|| format!("open {STATE_DIR} (no symlinks)"))?;
    if let Some(kind) = kind_at(state.as_fd(), TRASH_C)? {
        if kind != FileType::Directory {
            replace_trash(state.as_fd(), &stamp)?;
            moved.push(format!(
                "{STATE_DIR}/{TRASH} was {}: moved to {STATE_DIR}/{TRASH}/{stamp}/",
                dirfd::file_type_name(kind)
            ));
        }
    }
    let mut generation: Option<OwnedFd> = None;
    for (name, want) in EXPECTED {
        let Some(kind) = kind_at(state.as_fd(), name)? else {
            continue;
        };
        if kind == want {
            continue;
        }
        if generation.is_none() {
            generation = Some(make_generation(state.as_fd(), &stamp)?);
        }
        let generation = generation.as_ref().expect("set above");
        renameat_with(
            state.as_fd(),
            name,
            generation.as_fd(),
            name,
            RenameFlags::NOREPLACE,
        )
        .with_context(|| format!("move {STATE_DIR}/{name:?} into the trash"))?;
        dirfd::fsync_dir(generation.as_fd(), "trash generation")?;
        dirfd::fsync_dir(state.as_fd(), STATE_DIR)?;
        moved.push(format!(
            "{STATE_DIR}/{} was {}: moved to {STATE_DIR}/{TRASH}/{stamp}/",
            name.to_string_lossy(),
            dirfd::file_type_name(kind)
        ));
    }
    Ok(moved)
}

/// [`repair`], each entry moved aside a warning; a repair that fails is a
/// warning too (the steps after it report what they cannot use).
pub fn repair_logged(upper_fs: &Path) {
    match repair(upper_fs) {
        Ok(moved) => {
            for line in moved {
                log::warn!("repaired odd state on the upper: {line}");
            }
        }
        Err(e) => log::warn!(
            "{}: odd state could not be repaired: {e:#}",
            crate::layout::state_dir(upper_fs).display()
        ),
    }
}

/// `work/` beside the upper is overlayfs's scratch space: it holds no change
/// between mounts. When it is not a directory (a regular file, a symlink,
/// dangling or not, a FIFO...), no `work/` can be made and the overlay cannot
/// mount: move it aside into `.overlay-init/trash/STAMP/` (renamed, never
/// followed or opened), durably, so that a fresh one can be made. Returns the
/// line to log, `None` when `work` is missing or a directory.
pub fn move_aside_odd_work(upper_fs: &Path) -> Result<Option<String>> {
    let root = dirfd::open_dir(upper_fs)?;
    let kind = match kind_at(root.as_fd(), WORK_C)? {
        None | Some(FileType::Directory) => return Ok(None),
        Some(kind) => kind,
    };
    let (state, created) = dirfd::ensure_dir_at(root.as_fd(), STATE_DIR_C, DIR_MODE)
        .with_context(|| format!("open {STATE_DIR} (no symlinks)"))?;
    if created {
        dirfd::fsync_dir(root.as_fd(), "upper root")?;
    }
    let stamp = stamp();
    let generation = make_generation(state.as_fd(), &stamp)?;
    renameat_with(
        root.as_fd(),
        WORK_C,
        generation.as_fd(),
        WORK_C,
        RenameFlags::NOREPLACE,
    )
    .with_context(|| format!("move the odd {WORK} into the trash"))?;
    dirfd::fsync_dir(generation.as_fd(), "trash generation")?;
    dirfd::fsync_dir(root.as_fd(), "upper root")?;
    Ok(Some(format!(
        "{WORK} was {}: moved to {STATE_DIR}/{TRASH}/{stamp}/",
        dirfd::file_type_name(kind)
    )))
}

/// The type of `dir/name` (a symlink is a symlink); `None` when missing.
fn kind_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<FileType>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("stat {name:?}")),
    }
}

fn stamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "repair-{}.{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

fn c(name: &str) -> CString {
    CString::new(name).expect("no NUL in a formatted name")
}

/// `trash/STAMP`, created (durably).
fn make_generation(state: BorrowedFd<'_>, stamp: &str) -> Result<OwnedFd> {
    let (trash, created) = dirfd::ensure_dir_at(state, TRASH_C, DIR_MODE)?;
    if created {
        dirfd::fsync_dir(state, STATE_DIR)?;
    }
    dirfd::mkdir_at(trash.as_fd(), &c(stamp), DIR_MODE)?;
    dirfd::fsync_dir(trash.as_fd(), TRASH)?;
    dirfd::open_dir_at(trash.as_fd(), &c(stamp)).with_context(|| format!("open trash/{stamp}"))
}

/// `.overlay-init` is not a directory: build a fresh one beside it holding
/// `trash/STAMP/`, move the odd entry into that, then the fresh one into place.
fn replace_state_dir(root: BorrowedFd<'_>, stamp: &str) -> Result<()> {
    let fresh_name = c(&format!("{STATE_DIR}.{stamp}"));
    dirfd::mkdir_at(root, &fresh_name, DIR_MODE)?;
    let fresh =
        dirfd::open_dir_at(root, &fresh_name).with_context(|| format!("open {fresh_name:?}"))?;
    let generation = make_generation(fresh.as_fd(), stamp)?;
    dirfd::fsync_dir(root, "upper root")?;
    renameat_with(
        root,
        STATE_DIR_C,
        generation.as_fd(),
        STATE_DIR_C,
        RenameFlags::NOREPLACE,
    )
    .with_context(|| format!("move the odd {STATE_DIR} into the trash"))?;
    dirfd::fsync_dir(generation.as_fd(), "trash generation")?;
    renameat_with(root, &fresh_name, root, STATE_DIR_C, RenameFlags::NOREPLACE)
        .with_context(|| format!("put a fresh {STATE_DIR} in place"))?;
    dirfd::fsync_dir(root, "upper root")
}

/// `trash` is not a directory: the same, one level down.
fn replace_trash(state: BorrowedFd<'_>, stamp: &str) -> Result<()> {
    let fresh_name = c(&format!("{TRASH}.{stamp}"));
    dirfd::mkdir_at(state, &fresh_name, DIR_MODE)?;
    let fresh =
        dirfd::open_dir_at(state, &fresh_name).with_context(|| format!("open {fresh_name:?}"))?;
    dirfd::mkdir_at(fresh.as_fd(), &c(stamp), DIR_MODE)?;
    let generation = dirfd::open_dir_at(fresh.as_fd(), &c(stamp))
        .with_context(|| format!("open {TRASH}/{stamp}"))?;
    dirfd::fsync_dir(fresh.as_fd(), TRASH)?;
    dirfd::fsync_dir(state, STATE_DIR)?;
    renameat_with(
        state,
        TRASH_C,
        generation.as_fd(),
        TRASH_C,
        RenameFlags::NOREPLACE,
    )
    .with_context(|| format!("move the odd {TRASH} into the trash"))?;
    dirfd::fsync_dir(generation.as_fd(), "trash generation")?;
    renameat_with(state, &fresh_name, state, TRASH_C, RenameFlags::NOREPLACE)
        .with_context(|| format!("put a fresh {TRASH} in place"))?;
    dirfd::fsync_dir(state, STATE_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ovl-repair-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn generations(upper_fs: &Path) -> Vec<PathBuf> {
        fs::read_dir(upper_fs.join(".overlay-init/trash"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[test]
    fn a_state_dir_that_is_a_file_or_symlink_is_moved_into_the_trash() {
        for symlink in [false, true] {
            let dir = scratch(if symlink { "statelink" } else { "statefile" });
            let outside = dir.join("outside");
            fs::create_dir(&outside).unwrap();
            if symlink {
                std::os::unix::fs::symlink(&outside, dir.join(".overlay-init")).unwrap();
            } else {
                fs::write(dir.join(".overlay-init"), "junk").unwrap();
            }
            let moved = repair(&dir).unwrap();
            assert_eq!(moved.len(), 1, "{moved:?}");
            assert!(fs::symlink_metadata(dir.join(".overlay-init"))
                .unwrap()
                .is_dir());
            let gens = generations(&dir);
            assert_eq!(gens.len(), 1);
            assert!(fs::symlink_metadata(gens[0].join(".overlay-init")).is_ok());
            // Never followed: the symlink's target is untouched.
            assert!(outside.is_dir());
            // The counter works again (it failed on a non-directory before).
            assert_eq!(crate::bootcount::increment(&dir).unwrap(), 1);
            // Nothing left beside it.
            let top: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(top.len(), 2, "{top:?}");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn wrong_type_entries_are_moved_aside_and_right_ones_stay() {
        let dir = scratch("entries");
        let state = dir.join(".overlay-init");
        fs::create_dir_all(state.join("reset-request")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            state.join("bootcount"),
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        fs::write(state.join("trash"), "not a dir").unwrap();
        let moved = repair(&dir).unwrap();
        assert_eq!(moved.len(), 3, "{moved:?}");
        assert!(!state.join("reset-request").exists());
        assert!(fs::symlink_metadata(state.join("bootcount")).is_err());
        assert!(state.join("trash").is_dir());
        assert!(!crate::reset::status(&dir).unwrap().reset_pending);
        // A second run finds nothing to do.
        assert!(repair(&dir).unwrap().is_empty());
        // Right types are left alone.
        fs::write(state.join("bootcount"), "attempts=1\n").unwrap();
        fs::write(state.join("reset-request"), "requested-by=test\n").unwrap();
        assert!(repair(&dir).unwrap().is_empty());
        assert!(crate::reset::status(&dir).unwrap().reset_pending);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_odd_work_entry_is_moved_aside_never_followed() {
        let dir = scratch("work");
        assert_eq!(move_aside_odd_work(&dir).unwrap(), None);
        fs::create_dir(dir.join("work")).unwrap();
        assert_eq!(move_aside_odd_work(&dir).unwrap(), None);
        fs::remove_dir(dir.join("work")).unwrap();
        let outside = dir.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        for odd in ["file", "dangling", "link to a dir"] {
            match odd {
                "file" => fs::write(dir.join("work"), "junk").unwrap(),
                "dangling" => std::os::unix::fs::symlink("/nowhere", dir.join("work")).unwrap(),
                _ => std::os::unix::fs::symlink(&outside, dir.join("work")).unwrap(),
            }
            let line = move_aside_odd_work(&dir).unwrap().expect("moved");
            assert!(line.starts_with("work was a "), "{line}");
            assert!(fs::symlink_metadata(dir.join("work")).is_err(), "{odd}");
        }
        assert_eq!(generations(&dir).len(), 3);
        assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "x");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_state_is_not_odd() {
        let dir = scratch("missing");
        assert!(repair(&dir).unwrap().is_empty());
        assert!(!dir.join(".overlay-init").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
