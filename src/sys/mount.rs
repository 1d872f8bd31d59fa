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

/// Move a mount (`mount --move`), creating TARGET if missing (never onto a symlink).
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

/// `mkdir -p`, with context; the last component must then be a real
/// directory, never a symlink. Every caller mounts on the result or makes it
/// an overlay's upper/work, and a name under the upper or the new root
/// (`upper -> /x`, `rom -> /x`, `dev -> /x`) must not redirect that: a
/// symlink there is refused by name, never followed.
pub fn ensure_dir(path: &Path) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        refuse_non_dir(path, &meta)?;
        return Ok(());
    }
    fs::create_dir_all(path).with_context(|| format!("create directory {}", path.display()))?;
    let meta = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    refuse_non_dir(path, &meta)
}

fn refuse_non_dir(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        anyhow::bail!(
            "{} is a symlink: refused, never followed (a mount or an overlay directory goes there)",
            path.display()
        );
    }
    if !kind.is_dir() {
        anyhow::bail!("{} exists and is not a directory", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_dir_refuses_a_symlink_by_name() {
        let dir = std::env::temp_dir().join(format!("ovl-ensure-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("rom")).unwrap();
        let err = ensure_dir(&dir.join("rom")).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        fs::write(dir.join("file"), "").unwrap();
        assert!(ensure_dir(&dir.join("file")).is_err());
        ensure_dir(&dir.join("new/deeper")).unwrap();
        ensure_dir(&dir.join("new/deeper")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
