//! The "upper" step for a flash upper, as OpenWrt names them. Nothing is
//! waited for as a block device.
//!
//! - JFFS2 on an MTD partition (`ovl.upper=mtd:NAME`): the partition is looked
//!   up by name in `/proc/mtd` (up to `ovl.timeout=`), its start is read from
//!   `/dev/mtdN`, it is erased on first boot when
//!   [`crate::flashupper::decide_mtd`] says so, and `mtd:NAME` is handed to
//!   mount(2) as it is (the kernel's JFFS2 resolves it).
//! - UBIFS on a UBI volume (`ovl.upper=ubiN:NAME` or `ubi:NAME`): with
//!   `ovl.ubiattach=` the MTD partition is attached to UBI first (the kernel
//!   formats an empty one as it attaches); a missing volume is created with all
//!   the free space, an empty one is formatted by UBIFS at a read-write mount,
//!   and `ubiN:NAME` is handed to mount(2).
//!
//! From the mount on, it is the persistent upper of [`super::upper`]:
//! read-only first, boot counter, failsafe, reset, fallbacks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rustix::mount::MountFlags;

use super::failure::warn_box;
use super::upper::{self, UpperKind};
use crate::cmdline::Config;
use crate::failsafe;
use crate::flashupper::{
    classify_mtd, classify_mtd_start, classify_ubi_volume, decide_mtd, decide_ubi, mtd_edges,
    MtdDecision, UbiDecision,
};
use crate::mkfs::human_size;
use crate::overlay::Staging;
use crate::sys;
use crate::upperparams::{FlashSpec, UbiAttach};

/// What preparing the flash gave.
enum Prepared {
    /// Mount this source.
    Ready(String),
    /// The flash never showed up: a tmpfs upper, as for a missing block device.
    Missing(anyhow::Error),
}

/// The "upper" step for `spec`.
pub fn mount_flash_upper(
    config: &Config,
    staging: &Staging,
    spec: &FlashSpec,
    early_failsafe: Option<failsafe::Reason>,
) -> Result<UpperKind> {
    let shown = PathBuf::from(spec.to_string());
    let write_allowed = early_failsafe.is_none();
    let prepared = match spec {
        FlashSpec::Mtd { name } => prepare_mtd(config, name, write_allowed),
        FlashSpec::UbiVolume { device, name } => {
            prepare_ubi(config, *device, name, write_allowed, &staging.upper_fs())
        }
    };
    let mounted = match prepared {
        Ok(Prepared::Missing(why)) => {
            warn_box(
                "persistent upper not found, booting on a tmpfs upper",
                &[format!("ovl.upper={spec}"), format!("reason: {why:#}")],
            );
            return upper::tmpfs_upper(config, staging, early_failsafe);
        }
        Ok(Prepared::Ready(source)) => {
            sys::modules::ensure_filesystem(spec.fstype());
            upper::mount_checked(
                &source,
                &shown,
                spec.fstype(),
                config,
                &staging.upper_fs(),
                early_failsafe,
            )
        }
        Err(why) => Err(why),
    };
    let kind = upper::settle_persistent_upper(config, staging, &shown, mounted, early_failsafe)?;
    if matches!(spec, FlashSpec::Mtd { .. }) && matches!(kind, UpperKind::Persistent(_)) {
        warn_without_rename_exchange(&staging.upper_fs(), spec);
    }
    Ok(kind)
}

/// Mainline JFFS2 has no `RENAME_EXCHANGE` (nor `RENAME_WHITEOUT`): overlayfs
/// then cannot remove a directory of the lower that it copied up, make a
/// directory where a lower one was removed, or rename a lower file (EINVAL).
/// Said once per boot, so that the first failing `rm -r` is explained. The
/// project's kernel patch adds both (docs/flash.md).
fn warn_without_rename_exchange(upper_fs: &Path, spec: &FlashSpec) {
    match sys::upperfs::supports_rename_exchange(upper_fs) {
        Ok(true) => {}
        Ok(false) => warn_box(
            "this kernel's JFFS2 cannot exchange names (RENAME_EXCHANGE)",
            &[
                format!("upper: {spec} (jffs2)"),
                "removing a directory of the lower once its content was touched,".into(),
                "making a directory where a lower one was removed and renaming a".into(),
                "file of the lower fail with EINVAL: patch the kernel's JFFS2".into(),
                "(qemu/router-kernel/*.patch, see docs/flash.md) or use UBIFS".into(),
            ],
        ),
        Err(e) => log::warn!("could not check {spec} for RENAME_EXCHANGE: {e:#}"),
    }
}

/// Find the MTD partition `name`, erase it when it is OpenWrt's "erase me"
/// (`deadc0de`) or blank and `ovl.format=blank`, refuse anything that is
/// neither JFFS2 nor erased.
fn prepare_mtd(config: &Config, name: &str, write_allowed: bool) -> Result<Prepared> {
    let timeout = crate::lower::upper_deadline(config);
    let part = match sys::mtd::wait_for_partition(name, timeout) {
        Ok(part) => part,
        Err(why) => return Ok(Prepared::Missing(why)),
    };
    let mtd = sys::mtd::Mtd::open(part.index, false)?;
    let info = mtd.info;
    // The first erase block decides the common cases; zeroes need both ends
    // (a MiB each: PID 1's peak memory on a small router).
    let first = mtd.read(0, info.erase_size as usize)?;
    let content = match classify_mtd_start(&first) {
        Some(content) => content,
        None => {
            drop(first);
            let (head_len, tail_at, tail_len) = mtd_edges(info.size);
            let head = mtd.read(0, head_len)?;
            let tail = mtd.read(tail_at, tail_len)?;
            classify_mtd(&head, &tail, info.size, info.erase_size)
        }
    };
    match decide_mtd(&content, config.format, write_allowed) {
        MtdDecision::Use => {}
        MtdDecision::Refuse(why) => {
            bail!("mtd:{name} ({}) was not used: {why}", mtd.path().display())
        }
        MtdDecision::Erase(why) => {
            drop(mtd);
            let mtd = sys::mtd::Mtd::open(part.index, true)?;
            let blocks = info.size / u64::from(info.erase_size);
            log::info!(
                "erasing mtd:{name} ({}, {}, {blocks} blocks of {}): {why}",
                mtd.path().display(),
                human_size(info.size),
                human_size(info.erase_size.into())
            );
            let started = Instant::now();
            let bad = mtd.erase_all()?;
            log::info!(
                "erased mtd:{name} ({}, {}{}) in {} ms: an empty JFFS2",
                mtd.path().display(),
                human_size(info.size),
                match bad {
                    0 => String::new(),
                    n => format!(", {n} bad blocks skipped"),
                },
                started.elapsed().as_millis()
            );
        }
    }
    Ok(Prepared::Ready(format!("mtd:{name}")))
}

/// Attach (`ovl.ubiattach=`), find or create the volume `name`, let UBIFS
/// format it when it is empty (mounted read-write once at `target`, where the
/// upper goes); the source is `ubiN:NAME`.
fn prepare_ubi(
    config: &Config,
    device: Option<u32>,
    name: &str,
    write_allowed: bool,
    target: &Path,
) -> Result<Prepared> {
    let timeout = crate::lower::upper_deadline(config);
    let ubi = match &config.ubiattach {
        None => {
            // `ubi:NAME` is device 0, as the kernel's UBIFS reads it.
            let ubi = device.unwrap_or(0);
            if let Err(why) = sys::ubi::wait_for_device(ubi, timeout) {
                return Ok(Prepared::Missing(why));
            }
            ubi
        }
        Some(which) => {
            let mtd = match which {
                UbiAttach::Name(mtd_name) => sys::mtd::wait_for_partition(mtd_name, timeout),
                UbiAttach::Number(n) => sys::mtd::wait_for_index(*n, timeout),
            };
            let mtd = match mtd {
                Ok(part) => part,
                Err(why) => return Ok(Prepared::Missing(why)),
            };
            let ubi = attach_once(mtd.index, &mtd.name)?;
            if let Some(asked) = device.filter(|&asked| asked != ubi) {
                bail!(
                    "ovl.upper=ubi{asked}:{name}, but ovl.ubiattach= attached mtd{} as ubi{ubi} \
                     (use ovl.upper=ubi{ubi}:{name} or ubi:{name})",
                    mtd.index
                );
            }
            ubi
        }
    };
    let source = format!("ubi{ubi}:{name}");
    let volume = sys::ubi::volumes(ubi)?.into_iter().find(|v| v.name == name);
    let content = match &volume {
        Some(v) => Some(classify_ubi_volume(&sys::ubi::read_volume_start(
            ubi, v.id, 4096,
        )?)),
        None => None,
    };
    let create = match decide_ubi(content.as_ref(), config.format, write_allowed) {
        UbiDecision::Use => return Ok(Prepared::Ready(source)),
        UbiDecision::Refuse(why) => bail!("{source} was not used: {why}"),
        UbiDecision::CreateVolume => true,
        UbiDecision::Format => false,
    };
    let started = Instant::now();
    if create {
        let bytes = sys::ubi::available_bytes(ubi)?;
        let id = sys::ubi::make_volume(ubi, name, bytes)?;
        log::info!(
            "created the UBI volume {name:?} on ubi{ubi} (volume {id}, {}: all the free space)",
            human_size(bytes)
        );
    }
    // UBIFS formats an empty volume at its first read-write mount (never
    // read-only): mount it once, unmount, then go on as for any UBIFS.
    sys::modules::ensure_filesystem("ubifs");
    sys::mount::mount_fs(&source, target, "ubifs", MountFlags::NODEV, "")
        .with_context(|| format!("first read-write mount of {source}, which formats it"))?;
    sys::mount::umount(target, false)?;
    log::info!(
        "formatted {source} (ubifs) in {} ms",
        started.elapsed().as_millis()
    );
    Ok(Prepared::Ready(source))
}

/// The UBI device `mtd` is attached to, attaching it when it is not yet.
fn attach_once(mtd: u32, mtd_name: &str) -> Result<u32> {
    for ubi in sys::ubi::devices() {
        if sys::ubi::mtd_of(ubi)? == mtd {
            log::info!("ovl.ubiattach: mtd{mtd} ({mtd_name}) is already ubi{ubi}");
            return Ok(ubi);
        }
    }
    let started = Instant::now();
    let ubi = sys::ubi::attach(mtd)?;
    log::info!(
        "attached mtd{mtd} ({mtd_name}) as ubi{ubi} in {} ms",
        started.elapsed().as_millis()
    );
    Ok(ubi)
}
