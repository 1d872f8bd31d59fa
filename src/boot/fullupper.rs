//! A full persistent upper (issue 14): when `upper/`/`work/` cannot be made or
//! the overlay cannot be mounted and the upper's filesystem is out of space,
//! remove what is safe to remove, in order (an earlier reset's trash, then
//! `work/`'s leftovers, which overlayfs recreates) and try again. Only when
//! that is not enough does the boot fall back to tmpfs, saying that the upper
//! is full and how to free it.

use std::path::Path;

use anyhow::{anyhow, Result};

use crate::sys;

/// What can be removed from a full upper without losing a change, in the
/// order it is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// `.overlay-init/trash/`: what an earlier reset moved aside.
    ResetTrash,
    /// The contents of `work/`: overlayfs's scratch space, empty between mounts.
    WorkLeftovers,
}

pub const ROOM_ORDER: [Room; 2] = [Room::ResetTrash, Room::WorkLeftovers];

/// How to free a full upper, for the warning box.
pub fn full_upper_advice(dev: &Path) -> String {
    format!(
        "the upper {} is full: changes in this boot go to a tmpfs. To free it: boot with \
         ovl.failsafe, `mount -o remount,rw /overlay` and delete files under /overlay/upper, \
         or factory-reset it (`overlay-init reset`, or ovl.reset)",
        dev.display()
    )
}

/// Run `attempt`; when it fails on an upper that is out of space, remove the
/// next [`Room`] and run it again. `cleanup` undoes a failed attempt (e.g.
/// unmounts a read-only overlay) before the next one. The last error gets the
/// advice of [`full_upper_advice`] when the upper is still full.
pub fn with_room<T>(
    upper_fs: &Path,
    dev: &Path,
    mut attempt: impl FnMut() -> Result<T>,
    mut cleanup: impl FnMut() -> Result<()>,
) -> Result<T> {
    let mut last = match attempt() {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if !is_full(upper_fs) {
        return Err(last);
    }
    for room in ROOM_ORDER {
        cleanup()?;
        match make_room(upper_fs, room) {
            Ok(0) => continue,
            Ok(n) => log::warn!(
                "upper {} is full: removed {n} entries of {room:?}",
                dev.display()
            ),
            Err(e) => {
                log::warn!(
                    "upper {} is full; removing {room:?} failed: {e:#}",
                    dev.display()
                );
                continue;
            }
        }
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    if is_full(upper_fs) {
        cleanup()?;
        return Err(anyhow!("{}: {last:#}", full_upper_advice(dev)));
    }
    Err(last)
}

/// Whether the upper's filesystem has no room for an upper (see `sys::upperfs`).
fn is_full(upper_fs: &Path) -> bool {
    sys::upperfs::free_space(upper_fs).is_ok_and(|f| f.full_reason().is_some())
}

/// Remove one [`Room`]; the number of entries removed.
fn make_room(upper_fs: &Path, room: Room) -> Result<u64> {
    match room {
        Room::ResetTrash => Ok(crate::reset::remove_trash_now(upper_fs)?.removed),
        Room::WorkLeftovers => {
            let work = crate::reset::workdir(upper_fs);
            if !work.is_dir() {
                return Ok(0);
            }
            let fd = sys::dirfd::open_dir(&work)?;
            Ok(sys::wipe::wipe_contents(std::os::fd::AsFd::as_fd(&fd), &work)?.removed)
        }
    }
}
