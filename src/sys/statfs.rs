//! What kind of filesystem a descriptor is on.

use anyhow::{Context, Result};
use rustix::fd::BorrowedFd;

/// Is this descriptor on a filesystem that lives in memory only (tmpfs, ramfs)?
pub fn is_volatile_fs(fd: BorrowedFd<'_>) -> Result<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let fs = rustix::fs::fstatfs(fd).context("statfs")?;
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between targets
    let kind = fs.f_type as i64;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}
