//! Router mode's root change: `pivot_root`, and the filesystem type of `/`.
//!
//! Unlike switch_root from an initramfs (move the new root onto `/`, chroot),
//! pivot_root keeps the old root reachable: it is re-attached at `put_old`
//! inside the new root, which is how the kernel-mounted squashfs ends up at
//! `/rom`.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};

/// Make `new_root` the root of this mount namespace, re-attaching the old root
/// at `new_root/put_old` (a directory that must exist). Afterwards both the
/// process's root and its working directory are the new root.
pub fn pivot_root(new_root: &Path, put_old: &str) -> Result<()> {
    rustix::process::chdir(new_root).with_context(|| format!("chdir {}", new_root.display()))?;
    // Relative paths from inside the new root: the classic form that works
    // whatever the old root's path to the new one was.
    rustix::process::pivot_root(".", put_old).with_context(|| {
        format!(
            "pivot_root {} with the old root at {put_old} (the old root, {} and its parent mount must not be shared)",
            new_root.display(),
            new_root.display()
        )
    })?;
    rustix::process::chdir("/").context("chdir / in the new root")?;
    Ok(())
}

/// Whether `/` is a ramfs or tmpfs, i.e. an initramfs: the fallback test when
/// /proc is not mounted.
pub fn root_is_ram_filesystem() -> Result<bool> {
    let root = crate::sys::dirfd::open_dir(Path::new("/"))?;
    crate::sys::statfs::is_volatile_fs(root.as_fd()).context("statfs /")
}
