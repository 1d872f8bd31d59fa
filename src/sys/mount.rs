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
    info.lines()
        .any(|line| line.split(' ').nth(4).map(unescape_octal).as_deref() == Some(&*want))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `mkdir -p`, with context.
pub fn ensure_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("create directory {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
        assert_eq!(unescape_octal(r"/a\134b"), "/a\\b");
        assert_eq!(unescape_octal(r"/x\04"), r"/x\04");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }
}
