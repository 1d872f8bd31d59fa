//! Advisory locks (`flock`) on open descriptors.

use anyhow::{Context, Result};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;

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
