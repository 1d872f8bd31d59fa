//! The initramfs mode's part of each step: `/` is the initramfs, so the
//! lower is found (`root=`) and mounted at `/rom`, the upper's filesystem at
//! `/overlay`, the overlay at `/sysroot`; then the API mounts move into it,
//! the initramfs is freed, and switch_root.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::steps::{mount_api_filesystem, upper_name, API_MOUNTS};
use super::{Devices, MainLower};
use crate::cmdline::{Config, UpperSpec};
use crate::devspec::DeviceSpec;
use crate::hostmount::{mount_image_host, HostAccess};
use crate::lower::{
    find_devices as wait_for_root, lower_device_specs, mount_image_verified,
    mount_lower as mount_lower_device,
};
use crate::overlay::Staging;
use crate::sys;
use crate::sys::mount::{ensure_dir, move_mount};

/// Where the layers are assembled inside the initramfs: the lower at `/rom`,
/// the upper's filesystem at `/overlay`, the overlay at `/sysroot`. Those are
/// the paths the new root sees too, so the overlay's options in
/// `/proc/mounts` (`lowerdir=/rom,upperdir=/overlay/upper,...`) stay true after
/// the switch.
pub const STAGING_DIR: &str = "/";

/// Mounts that stay visible in the new system (extra lowers, an image's host).
pub const KEEP_DIR: &str = crate::layout::RUN_DIR;

/// The staging layout: nothing to mount, the initramfs is writable.
pub fn staging() -> Staging {
    Staging::new(STAGING_DIR, KEEP_DIR)
}

/// Mount /proc, /sys, /dev and /run (an already-mounted one is left alone).
pub fn mount_api_filesystems() -> Result<()> {
    for (source, target, fstype, data) in API_MOUNTS {
        mount_api_filesystem(source, Path::new(target), fstype, data)?;
    }
    Ok(())
}

pub fn log_start(config: &Config, uptime: Option<std::time::Duration>) {
    log::info!(
        "starting (uptime {} s): root={} upper={}",
        crate::decimal::secs(uptime.unwrap_or_default(), 3),
        config
            .root
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "(none)".into()),
        upper_name(config)
    );
}

/// `root=` is required; the real init is `init=` (or the default).
pub fn check_config(config: &Config) -> Result<String> {
    if config.root.is_none() {
        bail!("root= is missing: name the read-only lower device (root=/dev/NAME, LABEL=, UUID=, PARTUUID=, PARTLABEL=)");
    }
    Ok(config.init.clone())
}

/// Wait for `root=` and the `ovl.lower=` devices (fatal when missing) and the
/// upper device (a missing one boots on tmpfs).
pub fn find_devices(config: &Config) -> Result<Devices> {
    let root_spec = config.root.as_ref().context("root= is missing")?;
    let mut lower_devices: Vec<DeviceSpec> =
        lower_device_specs(config).into_iter().cloned().collect();
    // The ovl.verity_hash= device is waited for like a lower (required).
    let verity_hash = config.verity.as_ref().and_then(|v| v.hash_device.clone());
    lower_devices.extend(verity_hash.clone());
    let upper_device = match &config.upper {
        UpperSpec::Device(d) => Some(d),
        // A flash upper is waited for by the upper step (boot::flash), not as a block device.
        UpperSpec::Tmpfs | UpperSpec::File(_) | UpperSpec::Flash(_) => None,
    };
    let mut found = wait_for_root(config, root_spec, upper_device, &lower_devices)?;
    let verity_hash = verity_hash.and_then(|_| found.lowers.pop());
    Ok(Devices {
        root: Some(found.root),
        upper: found.upper,
        lowers: found.lowers,
        verity_hash,
    })
}

/// Mount `root=` read-only at `/rom`; with `ovl.image=`, mount it at the
/// image's host instead and loop-mount the image file at `/rom`.
/// With `ovl.verity=`, the lower is mounted from a dm-verity device over
/// `root=` (or over the image's loop device).
pub fn mount_lower(config: &Config, devices: &Devices, staging: &Staging) -> Result<MainLower> {
    let root = devices
        .root
        .as_deref()
        .context("internal: root device not resolved")?;
    let hash = devices.verity_hash.as_deref();
    let verify = |data: &Path| super::verity::main_lower(config, data, hash);
    let (dev, files_base) = match &config.image {
        None => (
            mount_lower_device(
                &verify(root)?,
                config.rootfstype,
                config.rootflags.as_deref(),
                &staging.rom(),
            )?,
            staging.rom(),
        ),
        Some(image) => {
            // root= holds the image file (an ISO, a FAT/exFAT stick, ext4, ...):
            // mount it read-only, loop-mount the file (from RAM with ovl.toram).
            let host = staging.image_host();
            mount_image_host(root, &host, HostAccess::ReadOnly)?;
            log::info!("ovl.image={image} on {}", root.display());
            let image_dir = crate::boot::live::image_source(config, staging, &host, image)?;
            let dev = mount_image_verified(
                &image_dir,
                image,
                config.rootfstype,
                config.rootflags.as_deref(),
                &staging.rom(),
                &verify,
            )?;
            (dev, host)
        }
    };
    Ok(MainLower {
        path: staging.rom(),
        dev,
        files_base,
    })
}

/// Move every API mount into the new root (creating its directory there).
pub fn move_api_mounts(staging: &Staging) -> Result<()> {
    let root = staging.root();
    for (_, target, _, _) in API_MOUNTS.iter().rev() {
        let inside = root.join(target.trim_start_matches('/'));
        ensure_dir(&inside)?;
        move_mount(Path::new(target), &inside)?;
    }
    Ok(())
}

/// The handover line's note on freeing the initramfs.
pub fn freed_note(freed: sys::switch::FreeStats) -> String {
    format!(
        "initramfs freed: {} entries removed, {} kept (mount points)",
        freed.removed, freed.kept
    )
}
