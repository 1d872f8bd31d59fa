//! Live media in the boot (the shell around `crate::live`): `ovl.toram`
//! copies the `ovl.image=` file into a tmpfs before it is loop-mounted, and a
//! persistence file (`ovl.upper=/PATH` on the `root=` filesystem that holds
//! the image) is loop-attached as the persistent upper — with its host
//! remounted read-write then, and only then.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rustix::mount::MountFlags;

use crate::boot::failure::warn_box;
use crate::cmdline::{Config, LowerSpec, UpperSpec};
use crate::hostmount;
use crate::live;
use crate::overlay::Staging;
use crate::sys;
use crate::sys::loopdev::{AttachOptions, LoopDevice};

/// The directory the image file `image` is read from: the image host at
/// `host`, or with `ovl.toram` a tmpfs the file was copied into (then the
/// host is unmounted when nothing else needs it, so the medium can go). Too
/// little RAM is a warning and the medium is used.
pub fn image_source(
    config: &Config,
    staging: &Staging,
    host: &Path,
    image: &str,
) -> Result<PathBuf> {
    if !config.toram {
        return Ok(host.to_path_buf());
    }
    let source = host.join(image.trim_start_matches('/'));
    let bytes = fs::metadata(&source)
        .with_context(|| format!("ovl.toram: image file {image}"))?
        .len();
    let meminfo = fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    let available = live::mem_available(&meminfo).context("no MemAvailable in /proc/meminfo")?;
    if let Err(why) = live::toram_fits(bytes, available) {
        warn_box("ovl.toram: not enough RAM", &[why]);
        return Ok(host.to_path_buf());
    }
    let ram = staging.keep_dir.join(crate::layout::TORAM);
    sys::mount::mount_fs(
        "toram",
        &ram,
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
        &format!("size={},mode=0700", live::toram_tmpfs_size(bytes)),
    )?;
    let copy = ram.join(image.trim_start_matches('/'));
    if let Some(parent) = copy.parent() {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    copy_with_progress(&source, &copy, bytes)
        .with_context(|| format!("ovl.toram: copy {image} to RAM"))?;
    if !host_needed_after_toram(config) {
        sys::mount::umount(host, false).context("ovl.toram: unmount the medium after the copy")?;
        log::info!("ovl.toram: the medium is unmounted and may be removed");
    }
    Ok(ram)
}

/// Whether the image host stays in use once the image is in RAM: a
/// persistence file or `ovl.lower=` image files live on it.
fn host_needed_after_toram(config: &Config) -> bool {
    matches!(config.upper, UpperSpec::File(_))
        || config
            .lowers
            .iter()
            .any(|l| matches!(l, LowerSpec::File(_)))
}

fn copy_with_progress(source: &Path, target: &Path, total: u64) -> Result<()> {
    let started = Instant::now();
    let mut from = File::open(source).with_context(|| format!("open {}", source.display()))?;
    let mut to = File::create(target).with_context(|| format!("create {}", target.display()))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    let mut next_line = started + live::TORAM_PROGRESS_EVERY;
    loop {
        let n = from
            .read(&mut buffer)
            .with_context(|| format!("read {}", source.display()))?;
        if n == 0 {
            break;
        }
        to.write_all(&buffer[..n])
            .with_context(|| format!("write {}", target.display()))?;
        copied += n as u64;
        if Instant::now() >= next_line {
            log::info!("{}", live::toram_progress(copied, total, started.elapsed()));
            next_line += live::TORAM_PROGRESS_EVERY;
        }
    }
    if copied != total {
        bail!("copied {copied} bytes of {total}: the file changed during the copy");
    }
    log::info!("{}", live::toram_progress(copied, total, started.elapsed()));
    Ok(())
}

/// The "upper file" step: with `ovl.upper=/PATH`, the persistence file on the
/// `root=` device `root` (mounted at the image host), loop-attached read-write
/// for the "upper" step, which treats it as a partition: mounted read-only
/// first, read-write only when used (in failsafe it stays read-only; the
/// device is writable as a partition is, so that an ext4 journal left by a
/// power cut can be replayed — a read-only loop device refuses that mount).
/// Any reason it cannot be used is a warning box and `None`: the boot goes on
/// with a tmpfs upper. The caller drops the device after the upper step: a
/// mount then holds it (autoclear), else it is detached.
pub fn attach_upper_file(
    config: &Config,
    staging: &Staging,
    root: Option<&Path>,
    early_failsafe: bool,
) -> Result<Option<LoopDevice>> {
    let UpperSpec::File(path) = &config.upper else {
        return Ok(None);
    };
    match upper_file(config, staging, root, path, early_failsafe) {
        Ok(device) => Ok(Some(device)),
        Err(why) => {
            warn_box(
                "persistence file not used, booting on a tmpfs upper",
                &[
                    format!("ovl.upper={path}"),
                    format!("reason: {why:#}"),
                    "changes in this boot are lost at reboot".into(),
                ],
            );
            Ok(None)
        }
    }
}

fn upper_file(
    config: &Config,
    staging: &Staging,
    root: Option<&Path>,
    path: &str,
    early_failsafe: bool,
) -> Result<LoopDevice> {
    let host = staging.image_host();
    let root = match (root, &config.image) {
        (Some(root), Some(_)) if sys::mount::is_mountpoint(&host) => root,
        _ => bail!(
            "a persistence file lives on the root= filesystem that holds ovl.image=; \
             this boot has no ovl.image="
        ),
    };
    let file = host.join(path.trim_start_matches('/'));
    let exists = file.exists();
    if early_failsafe && !exists {
        bail!(
            "{path} does not exist on {} (failsafe: nothing is created)",
            root.display()
        );
    }
    if !exists && config.upper_create.is_none() {
        bail!(
            "{path} does not exist on {}; ovl.upper_create=SIZE creates it",
            root.display()
        );
    }
    hostmount::remount_read_write(root, &host)?;
    let attached = (|| {
        if let (false, Some(size)) = (exists, config.upper_create) {
            create_upper_file(&file, size, &find_mkfs_ext4()?)?;
        }
        log::info!("persistence file {path} on {}", root.display());
        LoopDevice::attach_read_write(&file, AttachOptions::default())
            .with_context(|| format!("loop-attach {path} read-write"))
    })();
    if attached.is_err() {
        // Nothing is written to the host this boot: back to read-only.
        let flags = MountFlags::NODEV | MountFlags::NOSUID | MountFlags::RDONLY;
        if let Err(e) = sys::mount::remount(&host, flags, "") {
            log::warn!("image host left read-write: {e:#}");
        }
    }
    attached
}

/// The `mkfs.ext4` in the initramfs (see [`live::MKFS_EXT4_PATHS`]).
pub fn find_mkfs_ext4() -> Result<PathBuf> {
    live::MKFS_EXT4_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "ovl.upper_create: no mkfs.ext4 in the initramfs (looked for {}); add a static \
                 one (initramfs/build --file SRC:/sbin/mkfs.ext4) or create the file beforehand",
                live::MKFS_EXT4_PATHS.join(", ")
            )
        })
}

/// Create the persistence file `file` (sparse where the host allows, `size`
/// bytes) and format it with `mkfs`; a failed format removes the file, so the
/// next boot tries again.
pub fn create_upper_file(file: &Path, size: u64, mkfs: &Path) -> Result<()> {
    let shown = file.display().to_string();
    log::info!(
        "ovl.upper_create: creating {shown} ({size} bytes) and formatting it with {}",
        mkfs.display()
    );
    let created = File::options()
        .write(true)
        .create_new(true)
        .open(file)
        .with_context(|| format!("create {shown}"))?;
    let made = created
        .set_len(size)
        .and_then(|()| created.sync_all())
        .with_context(|| format!("size {shown} to {size} bytes"))
        .and_then(|()| sys::process::run_to_end(mkfs, &live::mkfs_args(&shown)));
    drop(created);
    if let Err(e) = made {
        let _ = fs::remove_file(file);
        return Err(e.context(format!("ovl.upper_create: {shown} not made (removed)")));
    }
    if let Some(parent) = file.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync {}", parent.display()))?;
    }
    Ok(())
}
