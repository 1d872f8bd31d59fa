//! First boot on a blank upper device (`ovl.format=`): classify the device,
//! decide, and format it when it is blank (or our own format cut short), before
//! the upper step mounts it. Anything else is left for the upper step's probe,
//! which reports it as before; nothing but a blank device is ever written.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmdline::Config;
use crate::fstype::FsType;
use crate::mkfs::{decide, FormatDecision};
use crate::overlay::Staging;
use crate::probe::blank::Classification;
use crate::sys;
use crate::upperparams::format_fstype;

/// mkfs is killed after this long: PID 1 never waits forever on an upper (a
/// 64 MiB ext4 takes well under a second; slow flash and TCG take longer).
pub const FORMAT_TIMEOUT: Duration = Duration::from_secs(120);

/// Format `dev` when it is blank and `ovl.format=blank`. `Ok` when the device
/// is now ready for the upper step's mount: `Ok(Some(fstype))` when the check
/// found a filesystem that can hold an upper (its superblock is not read
/// again), `Ok(None)` when the mount's own probe judges it (formatted just now,
/// or foreign); `Err` (the tmpfs fallback's reason) when a blank device is not
/// formatted (`ovl.format=never`, no mkfs, mkfs failed). A failed format leaves
/// the device blank or marked, so the next boot formats it again.
pub fn format_blank_upper(
    config: &Config,
    staging: &Staging,
    dev: &Path,
) -> Result<Option<FsType>> {
    let classification = sys::mkfs::classify_device(dev)
        .with_context(|| format!("check whether {} is blank", dev.display()))?;
    match &classification {
        // The probe already read its superblock: the mount need not read it again.
        Classification::Usable(info) => return Ok(info.fstype()),
        Classification::Foreign(_) => return Ok(None),
        _ => {}
    }
    match decide(&classification, config.format) {
        FormatDecision::Use => Ok(None),
        FormatDecision::Refuse(reason) => {
            bail!("{} was not formatted: {reason}", dev.display())
        }
        FormatDecision::Format => {
            let rom = staging.rom();
            // Initramfs mode has the lower at the staging's rom; in router mode
            // the lower is our own root, searched first anyway.
            let lower_root = sys::mount::is_mountpoint(&rom).then_some(rom.as_path());
            let request = sys::mkfs::FormatRequest {
                fstype: format_fstype(config.upperfstype),
                label: &config.upperlabel,
                lower_root,
                timeout: FORMAT_TIMEOUT,
            };
            let report = sys::mkfs::format_if_blank(dev, &request)
                .with_context(|| format!("first-boot format of {}", dev.display()))?;
            log::info!("{report}");
            // What was written is probed again by the mount, not assumed.
            Ok(None)
        }
    }
}
