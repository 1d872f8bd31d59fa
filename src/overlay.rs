//! Assembling the overlay root: the lower, the upper, the overlay mount, and the
//! moves that put `/rom` and `/overlay` into it. Paths are explicit so tests can
//! assemble a root in a private mount namespace without booting.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::mount::MountFlags;

use crate::cmdline::TmpfsSize;
use crate::fstype::FsType;
use crate::layout;
use crate::sys::mount::{is_read_only, mount_fs, move_mount};

/// Where the pieces are assembled before they move into the new root.
#[derive(Debug, Clone)]
pub struct Staging {
    /// Scratch space that is left behind (the initramfs).
    pub dir: PathBuf,
    /// Mounts that stay visible in the new system: extra lowers and the
    /// filesystem holding an image file. `/run/overlay-init` at boot, which
    /// moves into the new root with `/run`.
    pub keep_dir: PathBuf,
}

impl Staging {
    pub fn new(dir: impl Into<PathBuf>, keep_dir: impl Into<PathBuf>) -> Self {
        Staging {
            dir: dir.into(),
            keep_dir: keep_dir.into(),
        }
    }
    /// The main lower; becomes `/rom`.
    pub fn rom(&self) -> PathBuf {
        self.dir.join(layout::ROM_NAME)
    }
    /// Extra lower number `n` (0-based, in `ovl.lower=` order).
    pub fn extra_lower(&self, n: usize) -> PathBuf {
        self.keep_dir.join(layout::extra_lower_name(n))
    }
    /// The filesystem holding the `ovl.image=` file (`root=`).
    pub fn image_host(&self) -> PathBuf {
        self.keep_dir.join(layout::IMAGE_HOST)
    }
    /// The upper's filesystem; becomes `/overlay`.
    pub fn upper_fs(&self) -> PathBuf {
        self.dir.join(layout::OVERLAY_NAME)
    }
    /// The overlay mount: the new root.
    pub fn root(&self) -> PathBuf {
        self.dir.join("sysroot")
    }
}

/// `upper/` and `work/` inside the upper's filesystem (the layout is the reset's).
pub fn upper_dirs(upper_fs: &Path) -> (PathBuf, PathBuf) {
    (layout::upperdir(upper_fs), layout::workdir(upper_fs))
}

/// Overlay features that make offline changes to a lower undefined behaviour
/// (the kernel's overlayfs.rst, "Changes to underlying filesystems"). They are
/// turned off explicitly, whatever the kernel's build defaults
/// (`CONFIG_OVERLAY_FS_INDEX`, `_METACOPY`, `_REDIRECT_DIR`, `_XINO_AUTO`), so
/// that replacing the lower image between boots (a firmware upgrade) is safe.
/// The kernel lists an option in `/proc/mounts` only when it differs from the
/// module's default. See docs/upgrades.md.
pub const SAFE_OPTIONS: &str = "index=off,metacopy=off,redirect_dir=off,xino=off";

/// The overlayfs mount data. Lowers are listed topmost first: the main lower,
/// then the `ovl.lower=` entries in order, so the main lower wins on conflicts.
/// Always ends with [`SAFE_OPTIONS`].
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String> {
    if lowers.is_empty() {
        bail!("an overlay needs at least one lower layer");
    }
    let mut all: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    all.push(upper);
    all.push(work);
    for p in &all {
        let s = p.to_string_lossy();
        if s.contains([':', ',', '\\']) {
            bail!("overlay layer path {s:?} contains ':', ',' or '\\'");
        }
    }
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    Ok(format!(
        "lowerdir={},upperdir={},workdir={},{SAFE_OPTIONS}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    ))
}

/// Mount a read-only lower.
pub fn mount_lower(
    dev: &Path,
    fstype: FsType,
    rootflags: Option<&str>,
    target: &Path,
) -> Result<()> {
    crate::sys::modules::ensure_filesystem(fstype.kernel_name());
    mount_fs(
        &dev.to_string_lossy(),
        target,
        fstype.kernel_name(),
        MountFlags::RDONLY | MountFlags::NODEV,
        rootflags.unwrap_or(""),
    )
}

/// The size cap of a tmpfs upper without `ovl.size=`: half of RAM, written
/// out so the cap never depends on the kernel's default (a full tmpfs is
/// ENOSPC for the writer, never the OOM killer for the system).
pub const DEFAULT_TMPFS_SIZE: TmpfsSize = TmpfsSize::Percent(50);

/// Mount a tmpfs to hold the upper (or the fallback's changes), always capped.
pub fn mount_tmpfs_upper(target: &Path, size: Option<TmpfsSize>) -> Result<()> {
    let mut data = String::from("mode=0755,");
    data.push_str(&size.unwrap_or(DEFAULT_TMPFS_SIZE).mount_option());
    mount_fs(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOSUID,
        &data,
    )
}

/// Create `upper/` and `work/` on the upper's filesystem.
pub fn prepare_upper_dirs(upper_fs: &Path) -> Result<(PathBuf, PathBuf)> {
    let (upper, work) = upper_dirs(upper_fs);
    for dir in [&upper, &work] {
        crate::sys::mount::ensure_dir(dir)?;
    }
    Ok((upper, work))
}

/// Mount the overlay on `target` and check that it is writable: overlayfs
/// silently mounts read-only when it cannot use `work/`.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let data = overlay_options(lowers, upper, work)?;
    crate::sys::modules::ensure_filesystem("overlay");
    mount_fs("overlay", target, "overlay", MountFlags::empty(), &data)?;
    log::debug!("overlay mounted on {}: {data}", target.display());
    check_read_write(target)
        .context("overlayfs fell back to a read-only mount (see the kernel log)")
}

/// The overlay must be read-write: overlayfs mounts itself read-only when it
/// cannot use its work directory (no inode or block left for `work/work`, an
/// upper filesystem without the features it needs), and says so only in the
/// kernel log. The flag is enough: a file written and removed as a probe cost
/// 12 ms of every boot under TCG (a create and an unlink through the overlay),
/// and a real write failure shows to the system as it would anyway.
pub fn check_read_write(root: &Path) -> Result<()> {
    if is_read_only(root)? {
        bail!("{} is mounted read-only", root.display());
    }
    Ok(())
}

/// Move the main lower to `/rom` and the upper's filesystem to `/overlay` inside the new root.
pub fn move_layers_into_root(staging: &Staging) -> Result<()> {
    let root = staging.root();
    move_mount(&staging.rom(), &root.join(layout::ROM_NAME))?;
    move_mount(&staging.upper_fs(), &root.join(layout::OVERLAY_NAME))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_put_the_main_lower_on_top() {
        let s = Staging::new("/", "/run/overlay-init");
        let (u, w) = upper_dirs(&s.upper_fs());
        let opts = overlay_options(&[s.rom(), s.extra_lower(0), s.extra_lower(1)], &u, &w).unwrap();
        assert_eq!(
            opts,
            "lowerdir=/rom:/run/overlay-init/lower0:/run/overlay-init/lower1,upperdir=/overlay/upper,workdir=/overlay/work,\
             index=off,metacopy=off,redirect_dir=off,xino=off"
        );
    }

    #[test]
    fn overlay_options_reject_separators_in_paths() {
        let err = overlay_options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w"))
            .unwrap_err();
        assert!(err.to_string().contains("/a:b"));
        assert!(overlay_options(&[], Path::new("/u"), Path::new("/w")).is_err());
    }
}
