//! The read-only layers: waiting for the devices the command line names,
//! detecting their filesystems, mounting them (and image files on them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::boot::failure::warn_box;
use crate::cmdline::{Config, LowerSpec, RootWait};
use crate::devspec::DeviceSpec;
use crate::fstype::FsType;
use crate::overlay::{self, Staging};
use crate::sys;

/// Default bound on waiting for devices when neither `rootwait` nor `ovl.timeout` says.
pub const DEFAULT_DEVICE_TIMEOUT: u32 = 30;

/// Devices found for the command line's specs.
#[derive(Debug)]
pub struct FoundDevices {
    pub root: PathBuf,
    pub upper: Option<PathBuf>,
    pub lowers: Vec<PathBuf>,
}

/// The deadline for the device wait: `rootwait` is unbounded, `rootwait=N` and
/// `ovl.timeout=N` bound it (the shorter wins), else the default.
pub fn device_deadline(config: &Config) -> Option<Duration> {
    let secs = match (config.rootwait, config.timeout) {
        (RootWait::Forever, None) => return None,
        (RootWait::Forever, Some(t)) => t,
        (RootWait::Secs(s), Some(t)) => s.min(t),
        (RootWait::Secs(s), None) => s,
        (RootWait::Default, Some(t)) => t,
        (RootWait::Default, None) => DEFAULT_DEVICE_TIMEOUT,
    };
    Some(Duration::from_secs(secs.into()))
}

/// The bound on waiting for the persistent upper: `rootwait` waits for the
/// root (and extra lowers) without limit, never for the upper, whose absence
/// is a tmpfs fallback. The device deadline when there is one, else
/// `ovl.timeout=` or the default.
pub fn upper_deadline(config: &Config) -> Duration {
    device_deadline(config).unwrap_or_else(|| {
        Duration::from_secs(config.timeout.unwrap_or(DEFAULT_DEVICE_TIMEOUT).into())
    })
}

pub fn find_devices(
    config: &Config,
    root: &DeviceSpec,
    upper: Option<&DeviceSpec>,
    lowers: &[DeviceSpec],
) -> Result<FoundDevices> {
    let mut required: Vec<&DeviceSpec> = vec![root];
    required.extend(lowers.iter());
    let (mut paths, upper) = wait_for_devices(config, &required, upper)?;
    let lowers = paths.split_off(1);
    let root = paths.pop().context("internal: root device not resolved")?;
    Ok(FoundDevices {
        root,
        upper,
        lowers,
    })
}

/// The `ovl.lower=` device specs of the command line, in order.
pub fn lower_device_specs(config: &Config) -> Vec<&DeviceSpec> {
    config
        .lowers
        .iter()
        .filter_map(|l| match l {
            LowerSpec::Device(d) => Some(d),
            LowerSpec::File(_) => None,
        })
        .collect()
}

/// Wait for the `required` devices (in order; a missing one is an error after
/// the deadline) and the upper device (a missing one is a warning: the boot
/// goes on with a tmpfs upper). Shared by initramfs and router mode.
///
/// `/dev/NAME` specs whose node is already a live block device are taken as
/// they are, like the kernel's own `root=/dev/NAME`: only when something is
/// missing or named by LABEL/UUID/... does the uevent watcher start.
pub fn wait_for_devices(
    config: &Config,
    required: &[&DeviceSpec],
    upper: Option<&DeviceSpec>,
) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let present_now = |spec: &DeviceSpec| match spec {
        DeviceSpec::Path(p) if sys::blockdev::is_live_block_device(Path::new(p)) => {
            Some(PathBuf::from(p))
        }
        _ => None,
    };
    let fast: Option<Vec<PathBuf>> = required.iter().map(|s| present_now(s)).collect();
    let fast_upper = upper.map(present_now);
    if let (Some(found), None | Some(Some(_))) = (&fast, &fast_upper) {
        for (spec, path) in required.iter().zip(found) {
            log::debug!("{spec} is present: {}", path.display());
        }
        return Ok((found.clone(), fast_upper.flatten()));
    }
    let mut waiter =
        sys::blockdev::DeviceWaiter::new().context("start watching for block devices")?;
    // The clock starts once the devices already there are known, so the wait the
    // error message reports is the whole of `ovl.timeout=`.
    let started = Instant::now();
    let deadline = device_deadline(config).map(|d| started + d);
    let found = if required.is_empty() {
        Vec::new()
    } else {
        waiter
            .wait_for(required, deadline, |_| {})?
            .into_iter()
            .map(|r| r.dev_path)
            .collect()
    };
    // A missing upper never blocks boot: it is waited for (never without
    // limit, even with `rootwait`), then degraded to tmpfs.
    let upper_deadline = Some(started + upper_deadline(config));
    let upper = match upper {
        None => None,
        Some(spec) => match waiter.wait_for(&[spec], upper_deadline, |_| {}) {
            Ok(mut r) => r.pop().map(|r| r.dev_path),
            Err(e) => {
                warn_box(
                    "persistent upper not found, booting on a tmpfs upper",
                    &[format!("ovl.upper={spec}"), format!("reason: {e:#}")],
                );
                None
            }
        },
    };
    Ok((found, upper))
}

/// Mount the `ovl.lower=` layers, in order, at `staging.extra_lower(n)`:
/// devices from `devices` (found for the device entries, in order), image
/// files from the filesystem at `files_base`. Returns the mount points.
pub fn mount_extra_lowers(
    config: &Config,
    devices: &[PathBuf],
    files_base: &Path,
    staging: &Staging,
) -> Result<Vec<PathBuf>> {
    let mut device_iter = devices.iter();
    let mut mounted = Vec::new();
    for (n, spec) in config.lowers.iter().enumerate() {
        let target = staging.extra_lower(n);
        // `SPEC@ROOTHASH`: mounted from a dm-verity device over it.
        let verify = |data: &Path| crate::boot::verity::extra_lower(config, n, data);
        match spec {
            LowerSpec::Device(_) => {
                let dev = device_iter.next().context("internal: lower device count")?;
                mount_lower(&verify(dev)?, None, None, &target)?;
            }
            LowerSpec::File(path) => {
                mount_image_verified(files_base, path, None, None, &target, &verify)?;
            }
        }
        mounted.push(target);
    }
    Ok(mounted)
}

/// Read the first bytes of a device and detect its filesystem.
pub fn detect_fstype(dev: &Path) -> Result<FsType> {
    let head = sys::io::read_head(dev, crate::probe::superblock::PROBE_BYTES)?;
    match crate::probe::superblock::detect(&head) {
        Ok(Some(info)) => info.fstype().ok_or_else(|| {
            anyhow!(crate::live::not_a_lower(
                &dev.display().to_string(),
                &info.kind
            ))
        }),
        Ok(None) => bail!(
            "{} holds no filesystem overlay-init recognises (squashfs, erofs, ext4)",
            dev.display()
        ),
        Err(e) => bail!("{}: {e}", dev.display()),
    }
}

/// Mount a read-only lower; returns the mounted filesystem's device number.
pub fn mount_lower(
    dev: &Path,
    fstype: Option<FsType>,
    flags: Option<&str>,
    target: &Path,
) -> Result<u64> {
    let fstype = match fstype {
        Some(t) => t,
        None => detect_fstype(dev)?,
    };
    log::info!(
        "lower: {} ({fstype}) read-only on {}",
        dev.display(),
        target.display()
    );
    overlay::mount_lower(dev, fstype, flags, target)?;
    sys::mount::dev_of(target)
}

/// Loop-mount the image file `path` (absolute, on the filesystem at `host`) read-only on `target`.
pub fn mount_image(
    host: &Path,
    path: &str,
    fstype: Option<FsType>,
    flags: Option<&str>,
    target: &Path,
) -> Result<u64> {
    mount_image_verified(host, path, fstype, flags, target, &|d| Ok(d.to_path_buf()))
}

/// [`mount_image`], with `verify` mapping the loop device to the device to
/// mount (a dm-verity device over it).
pub fn mount_image_verified(
    host: &Path,
    path: &str,
    fstype: Option<FsType>,
    flags: Option<&str>,
    target: &Path,
    verify: &dyn Fn(&Path) -> Result<PathBuf>,
) -> Result<u64> {
    // Resolved inside the host filesystem, as `check_init` resolves the init:
    // `..` and symlinks never leave it.
    let file =
        sys::dirfd::resolve_in_root(host, path).with_context(|| format!("image file {path}"))?;
    if !Path::new("/dev/loop-control").exists() {
        let _ = sys::modules::load_on_demand("loop");
    }
    let loop_dev = sys::loopdev::attach_image(&file)?;
    let dev = verify(loop_dev.path())
        .and_then(|data| mount_lower(&data, fstype, flags, target))
        .with_context(|| format!("image file {path}"))?;
    // The mount holds the device now; autoclear frees it when the mount goes.
    loop_dev.keep();
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rules() {
        let mut c = Config::default();
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(30)));
        c.rootwait = RootWait::Forever;
        assert_eq!(device_deadline(&c), None);
        // The upper is never waited for without limit.
        assert_eq!(upper_deadline(&c), Duration::from_secs(30));
        c.timeout = Some(5);
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(5)));
        c.rootwait = RootWait::Secs(3);
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(3)));
        c.rootwait = RootWait::Default;
        assert_eq!(device_deadline(&c), Some(Duration::from_secs(5)));
    }
}
