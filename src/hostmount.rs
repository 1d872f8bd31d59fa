//! Mounting the filesystem that holds image files (`ovl.image=`, image files of
//! `ovl.lower=`, a persistence file): an ISO, a FAT/exFAT stick, ext4, ...
//! The choice of type, options and modules is `live::image_host` (pure); this
//! is the thin shell that probes the device, loads the modules and mounts.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rustix::mount::MountFlags;

use crate::live::{image_host, HostMount};
use crate::sys;

/// How the host is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAccess {
    ReadOnly,
    /// For a persistence file on it: refused for a filesystem that cannot be written (an ISO).
    ReadWrite,
}

/// Probe `dev`, then mount it on `target` as an image host with the options
/// `live::image_host` gives; returns what was mounted. Errors name the device,
/// what it holds, and the mount that failed.
pub fn mount_image_host(dev: &Path, target: &Path, access: HostAccess) -> Result<HostMount> {
    let shown = dev.display().to_string();
    let info = match sys::io::detect_filesystem(dev)? {
        Ok(Some(info)) => info,
        Ok(None) => bail!("{shown} holds no filesystem overlay-init recognises, so no image file"),
        Err(e) => bail!("{shown}: {e}"),
    };
    let host = image_host(&shown, &info.kind).map_err(|e| anyhow!(e))?;
    let mut flags = MountFlags::NODEV | MountFlags::NOSUID;
    match access {
        HostAccess::ReadOnly => flags |= MountFlags::RDONLY,
        HostAccess::ReadWrite if !host.writable => {
            bail!(
                "{shown} holds {}, which cannot be mounted read-write",
                host.fstype
            )
        }
        HostAccess::ReadWrite => {}
    }
    // Each at most once; a name the initramfs does not carry (built in, or
    // left out) is nothing to load. The character sets are needed even when
    // the filesystem itself is built in.
    for module in host.modules {
        let _ = sys::modules::load_on_demand(module);
    }
    log::info!(
        "image host: {shown} ({}) {} on {}",
        host.fstype,
        if access == HostAccess::ReadOnly {
            "read-only"
        } else {
            "read-write"
        },
        target.display()
    );
    sys::mount::mount_fs(&shown, target, host.fstype, flags, host.options)
        .with_context(|| format!("mount the image host {shown} ({})", host.fstype))?;
    Ok(host)
}

/// Remount the image host `dev` (mounted read-only at `target` by
/// [`mount_image_host`]) read-write, for a persistence file on it. A
/// filesystem that cannot be written (an ISO) is refused, naming its type.
pub fn remount_read_write(dev: &Path, target: &Path) -> Result<HostMount> {
    let shown = dev.display().to_string();
    let info = match sys::io::detect_filesystem(dev)? {
        Ok(Some(info)) => info,
        Ok(None) => bail!("{shown} holds no filesystem overlay-init recognises"),
        Err(e) => bail!("{shown}: {e}"),
    };
    let host = image_host(&shown, &info.kind).map_err(|e| anyhow!(e))?;
    if !host.writable {
        bail!(
            "{shown} holds {}, which is read-only: a persistence file on it cannot be written",
            host.fstype
        );
    }
    sys::mount::remount(target, MountFlags::NODEV | MountFlags::NOSUID, "").with_context(|| {
        format!(
            "remount the image host {shown} ({}) read-write",
            host.fstype
        )
    })?;
    if sys::mount::is_read_only(target)? {
        bail!(
            "{shown} ({}) stayed read-only after a read-write remount (write-protected?)",
            host.fstype
        );
    }
    log::info!(
        "image host: {shown} ({}) read-write for the persistence file",
        host.fstype
    );
    Ok(host)
}
