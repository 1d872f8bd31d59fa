//! A persistent upper is first mounted read-only, looked at (boot counter,
//! free space), and only then made writable: a device that will not be used
//! is never written to.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rustix::mount::{mount_remount, MountFlags};

/// Below this much free space (or these few free inodes) an upper is full:
/// the real init would fail on its first writes.
pub const MIN_FREE_BYTES: u64 = 512 * 1024;
pub const MIN_FREE_INODES: u64 = 32;

/// Free space on a filesystem as root sees it: PID 1 and the system it boots
/// run as root, so blocks reserved for root (ext4's reserve, `f_bfree` minus
/// `f_bavail`) are usable. A disk that root filled to its reserve is not full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    /// Free bytes, root's reserve included (`f_bfree`).
    pub bytes: u64,
    /// Free bytes for ordinary users, as `df` shows them (`f_bavail`).
    pub bytes_unreserved: u64,
    /// `None` on filesystems without an inode count.
    pub inodes: Option<u64>,
}

impl FreeSpace {
    /// Only root's reserve is left: usable, worth a warning.
    pub fn in_reserve(&self) -> bool {
        self.bytes_unreserved < MIN_FREE_BYTES && self.bytes >= MIN_FREE_BYTES
    }

    /// Why the filesystem is too full for an upper, if it is (judged as root).
    pub fn full_reason(&self) -> Option<String> {
        if self.bytes < MIN_FREE_BYTES {
            return Some(format!(
                "full: {} KiB free (an upper needs at least {} KiB)",
                self.bytes / 1024,
                MIN_FREE_BYTES / 1024
            ));
        }
        match self.inodes {
            Some(n) if n < MIN_FREE_INODES => Some(format!(
                "full: {n} free inodes (an upper needs at least {MIN_FREE_INODES})"
            )),
            _ => None,
        }
    }
}

/// `statvfs` of the filesystem at `path`.
pub fn free_space(path: &Path) -> Result<FreeSpace> {
    let st = rustix::fs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    let bytes = st.f_bfree.saturating_mul(st.f_frsize);
    let bytes_unreserved = st.f_bavail.saturating_mul(st.f_frsize);
    let inodes = (st.f_files > 0).then_some(st.f_ffree);
    Ok(FreeSpace {
        bytes,
        bytes_unreserved,
        inodes,
    })
}

/// Remount the filesystem at `target` read-write and check that it is.
pub fn remount_read_write(target: &Path, dev: &Path) -> Result<()> {
    mount_remount(target, MountFlags::NODEV, "")
        .with_context(|| format!("remount {} read-write", dev.display()))?;
    if is_f2fs(target) {
        // See F2FS_SUPER_MAGIC: only a read-write f2fs takes `flush_merge`.
        mount_remount(target, MountFlags::NODEV, "flush_merge")
            .with_context(|| format!("remount {} read-write with flush_merge", dev.display()))?;
    }
    if crate::sys::mount::is_read_only(target)? {
        bail!(
            "{} stayed read-only after a read-write remount (write-protected?)",
            dev.display()
        );
    }
    Ok(())
}

/// Whether the filesystem at `upper_fs` (mounted read-write) can
/// `renameat2(RENAME_EXCHANGE)`, which overlayfs needs to remove a directory of
/// the lower and to create a name over a whiteout. Mainline JFFS2 cannot
/// (EINVAL; OpenWrt patches its kernels). Tried on two empty files in a
/// scratch directory ([`crate::layout::RENAME_PROBE`]), removed afterwards.
pub fn supports_rename_exchange(upper_fs: &Path) -> Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let probe = upper_fs.join(crate::layout::RENAME_PROBE);
    let (a, b) = (probe.join("a"), probe.join("b"));
    let cleanup = || {
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        let _ = std::fs::remove_dir(&probe);
    };
    cleanup();
    std::fs::create_dir(&probe).with_context(|| format!("create {}", probe.display()))?;
    let made = std::fs::write(&a, b"a").and_then(|()| std::fs::write(&b, b"b"));
    let result = match made {
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("create files in {}", probe.display())))
        }
        Ok(()) => match renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("renameat2(RENAME_EXCHANGE)")),
        },
    };
    cleanup();
    result
}

/// `statfs` magic of f2fs.
const F2FS_SUPER_MAGIC: i64 = 0xF2F5_2010;

/// Whether `target` is f2fs. Mounted read-only, f2fs turns its default
/// `flush_merge` off and has no flush control; remounted read-write without
/// `flush_merge` it keeps none, and the first fsync dereferences it (a NULL
/// pointer oops in `f2fs_issue_flush`, seen on 6.1). `flush_merge` is refused
/// while read-only, so the remount read-write is followed by one that asks
/// for it.
#[allow(clippy::unnecessary_cast)] // f_type's type differs between architectures
fn is_f2fs(target: &Path) -> bool {
    rustix::fs::statfs(target).is_ok_and(|st| st.f_type as i64 == F2FS_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_when_bytes_or_inodes_run_out() {
        let roomy = FreeSpace {
            bytes: 10 << 20,
            bytes_unreserved: 10 << 20,
            inodes: Some(1000),
        };
        assert_eq!(roomy.full_reason(), None);
        assert!(!roomy.in_reserve());
        // Filled by root to its reserve: usable, with a warning.
        let reserve = FreeSpace {
            bytes_unreserved: 0,
            ..roomy
        };
        assert_eq!(reserve.full_reason(), None);
        assert!(reserve.in_reserve());
        let no_bytes = FreeSpace {
            bytes: 4096,
            bytes_unreserved: 0,
            ..roomy
        };
        assert!(no_bytes.full_reason().unwrap().contains("4 KiB free"));
        let no_inodes = FreeSpace {
            inodes: Some(3),
            ..roomy
        };
        assert!(no_inodes.full_reason().unwrap().contains("3 free inodes"));
        let no_inode_count = FreeSpace {
            inodes: None,
            ..roomy
        };
        assert_eq!(no_inode_count.full_reason(), None);
    }

    #[test]
    fn free_space_of_a_real_directory() {
        let space = free_space(&std::env::temp_dir()).unwrap();
        assert!(space.bytes > 0);
    }
}
