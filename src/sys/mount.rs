//! Mounting, moving and checking mounts. Thin wrappers that add context.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::mount::{
    mount, mount_change, mount_move, unmount, MountFlags, MountPropagationFlags, UnmountFlags,
};

/// `mount -t FSTYPE [-o DATA] SOURCE TARGET`, creating TARGET if missing.
pub fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<()> {
    ensure_dir(target)?;
    let data_c = std::ffi::CString::new(data).context("mount options contain a NUL byte")?;
    let data_opt = (!data.is_empty()).then_some(data_c.as_c_str());
    mount(source, target, fstype, flags, data_opt).with_context(|| {
        let opts = if data.is_empty() {
            String::new()
        } else {
            format!(" -o {data}")
        };
        format!("mount -t {fstype}{opts} {source} on {}", target.display())
    })
}

/// `mount -o remount,FLAGS[,DATA] TARGET`: the flags replace the mount's
/// (read-write unless `flags` holds RDONLY).
pub fn remount(target: &Path, flags: MountFlags, data: &str) -> Result<()> {
    let data_c = std::ffi::CString::new(data).context("mount options contain a NUL byte")?;
    rustix::mount::mount_remount(target, flags, data_c.as_c_str())
        .with_context(|| format!("remount {}", target.display()))
}

/// Move a mount (`mount --move`), creating TARGET if missing.
pub fn move_mount(from: &Path, to: &Path) -> Result<()> {
    ensure_dir(to)?;
    mount_move(from, to)
        .with_context(|| format!("move mount {} to {}", from.display(), to.display()))
}

/// Make every mount below `path` private, so moves do not propagate.
pub fn make_rprivate(path: &Path) -> Result<()> {
    mount_change(
        path,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .with_context(|| format!("make {} private", path.display()))
}

/// Unmount `target`; a lazy detach when `lazy`.
pub fn umount(target: &Path, lazy: bool) -> Result<()> {
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    unmount(target, flags).with_context(|| format!("unmount {}", target.display()))
}

/// Whether the filesystem at `path` is mounted read-only.
pub fn is_read_only(path: &Path) -> Result<bool> {
    let st = rustix::fs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// The device number of the filesystem holding `path`.
pub fn dev_of(path: &Path) -> Result<u64> {
    let st = rustix::fs::stat(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(st.st_dev)
}

/// Whether another filesystem is mounted on `path`: its device differs from its
/// parent's. Two `stat`s, no /proc needed; blind to a bind mount of the same
/// filesystem (use [`is_mountpoint`] where that matters).
pub fn has_other_fs_mounted(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (rustix::fs::stat(path), rustix::fs::stat(parent)) {
        (Ok(here), Ok(above)) => here.st_dev != above.st_dev,
        _ => false,
    }
}

/// Whether something is mounted exactly at `path` (its device differs from its parent's,
/// or it is listed in mountinfo for bind mounts of the same filesystem).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(path) else {
        return false;
    };
    let mut info = String::new();
    if fs::File::open("/proc/self/mountinfo")
        .and_then(|mut f| f.read_to_string(&mut info))
        .is_err()
    {
        return false;
    }
    let want = canon.to_string_lossy();
    crate::mountinfo::parse_mountinfo(&info)
        .iter()
        .any(|entry| entry.mount_point == want)
}

/// `mkdir -p`, with context.
pub fn ensure_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("create directory {}", path.display()))
}
