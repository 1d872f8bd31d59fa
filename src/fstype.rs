//! Filesystem types overlay-init knows how to mount as a lower or an upper.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    Squashfs,
    Erofs,
    Ext4,
    /// Flash-friendly filesystem: an upper on eMMC/SD/USB flash (OpenWrt's choice above 100 MiB).
    F2fs,
}

impl FsType {
    /// The name the kernel's `mount(2)` expects.
    pub fn kernel_name(self) -> &'static str {
        match self {
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
            FsType::Ext4 => "ext4",
            FsType::F2fs => "f2fs",
        }
    }

    /// Parse a `rootfstype=` / `ovl.upperfstype=` value (`auto` is handled by the caller).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "squashfs" => Some(FsType::Squashfs),
            "erofs" => Some(FsType::Erofs),
            // ext2/ext3 filesystems are mounted by the ext4 driver.
            "ext4" | "ext3" | "ext2" => Some(FsType::Ext4),
            "f2fs" => Some(FsType::F2fs),
            _ => None,
        }
    }

    /// Whether the filesystem can hold an overlay upper (needs xattrs, writable).
    pub fn can_be_upper(self) -> bool {
        matches!(self, FsType::Ext4 | FsType::F2fs)
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_name())
    }
}
