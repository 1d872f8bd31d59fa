//! First-boot format: classify the device, keep the format marker in its last
//! sector while mkfs runs, check the result, clear the marker. A device that is
//! not blank (nor our own interrupted format) is never opened for writing.
//! See `probe::blank` for why the marker makes a power cut harmless.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::fstype::FsType;
use crate::mkfs::{find_mkfs, human_size, plan_format, FormatPlan, MkfsTool};
use crate::probe::blank::{
    classify, classify_usable, edge_ranges, marker_offset, Classification, Edges, FormatMarker,
    MARKER_BYTES, QUICK_HEAD_BYTES, QUICK_TAIL_BYTES,
};
use crate::probe::superblock::detect;
use crate::sys::process::Ended;

/// What [`classify_device`] read, kept for the formatter.
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub size: u64,
    pub sector_size: u32,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

impl DeviceView {
    pub fn classify(&self) -> Classification {
        classify(Edges {
            head: &self.head,
            tail: &self.tail,
            size: self.size,
            sector_size: self.sector_size,
        })
    }
}

/// Read the first and last MiB of `device` (a block device or, in tests, an
/// image file), read-only.
pub fn read_device(device: &Path) -> Result<DeviceView> {
    read_edges(device, edge_ranges)
}

/// Read the edges of `device` that `ranges(size)` names: `(head_len,
/// tail_offset, tail_len)`.
fn read_edges(device: &Path, ranges: impl Fn(u64) -> (usize, u64, usize)) -> Result<DeviceView> {
    let mut file =
        File::open(device).with_context(|| format!("open {} to probe it", device.display()))?;
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("size of {}", device.display()))?;
    let sector_size = if file.metadata()?.file_type().is_file() {
        512
    } else {
        rustix::fs::ioctl_blksszget(&file)
            .with_context(|| format!("BLKSSZGET on {}", device.display()))?
    };
    let (head_len, tail_offset, tail_len) = ranges(size);
    let mut head = vec![0u8; head_len];
    file.read_exact_at(&mut head, 0)
        .with_context(|| format!("read the first {head_len} bytes of {}", device.display()))?;
    let mut tail = vec![0u8; tail_len];
    file.read_exact_at(&mut tail, tail_offset)
        .with_context(|| format!("read the last {tail_len} bytes of {}", device.display()))?;
    Ok(DeviceView {
        size,
        sector_size,
        head,
        tail,
    })
}

/// Classify `device` (see `probe::blank::classify`).
/// An upper that already holds its filesystem (every boot but the first) is
/// told from a short read; only the rest needs the whole edges.
pub fn classify_device(device: &Path) -> Result<Classification> {
    let quick = read_edges(device, |size| {
        let head = size.min(QUICK_HEAD_BYTES as u64) as usize;
        let tail = size.min(QUICK_TAIL_BYTES as u64) as usize;
        (head, size - tail as u64, tail)
    })?;
    let usable = classify_usable(Edges {
        head: &quick.head,
        tail: &quick.tail,
        size: quick.size,
        sector_size: quick.sector_size,
    });
    match usable {
        Some(classification) => Ok(classification),
        None => Ok(read_device(device)?.classify()),
    }
}

/// A finished format, printed as the boot log line.
#[derive(Debug, Clone)]
pub struct FormatReport {
    pub device: PathBuf,
    pub fstype: FsType,
    pub label: String,
    pub device_size: u64,
    pub tool: MkfsTool,
    pub elapsed: Duration,
    /// The device was our own format cut short, not a blank device.
    pub was_interrupted: bool,
}

impl std::fmt::Display for FormatReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "formatted {} ({}, label {}, {}) in {} ms",
            self.device.display(),
            self.fstype,
            self.label,
            human_size(self.device_size),
            self.elapsed.as_millis()
        )?;
        if self.was_interrupted {
            f.write_str(" (an earlier format of it had been cut short)")?;
        }
        Ok(())
    }
}

/// What the formatter needs besides the device.
#[derive(Debug, Clone)]
pub struct FormatRequest<'a> {
    pub fstype: FsType,
    pub label: &'a str,
    /// The lower's root, where its own mkfs may be (`/rom`-like); mounted.
    pub lower_root: Option<&'a Path>,
    /// mkfs is killed after this long (PID 1 never waits forever on an upper).
    pub timeout: Duration,
}

/// Format `device` if, and only if, it is blank or our own interrupted format.
/// On any error the device is left blank, or marked (the next boot formats it
/// again), never half-used.
pub fn format_if_blank(device: &Path, request: &FormatRequest<'_>) -> Result<FormatReport> {
    let started = Instant::now();
    let view = read_device(device)?;
    let was_interrupted = match view.classify() {
        Classification::Blank(_) => false,
        Classification::Interrupted(_) => true,
        Classification::Usable(info) => bail!(
            "{} already holds {} (label {}): not formatting it",
            device.display(),
            info.fstype().map_or("a filesystem", FsType::kernel_name),
            info.label.as_deref().unwrap_or("none")
        ),
        Classification::Foreign(what) => bail!(
            "{} holds {what}: it is not blank, so it is not formatted",
            device.display()
        ),
    };
    let tool = find_mkfs(request.fstype, request.lower_root, |path| {
        match request.lower_root {
            Some(root) if path.starts_with(root) => {
                is_executable_in_root(root, path.strip_prefix(root).unwrap_or(path))
            }
            _ => is_executable(path),
        }
    })
    .map_err(anyhow::Error::msg)?;
    let plan = plan_format(
        tool,
        request.fstype,
        request.label,
        device,
        view.size,
        view.sector_size,
    )
    .map_err(anyhow::Error::msg)?;

    let marker = FormatMarker {
        device_size: plan.device_size,
        fs_size: plan.fs_size,
        fstype: plan.fstype,
    };
    log::info!(
        "formatting {} ({}, label {}, {}) with {}",
        device.display(),
        plan.fstype,
        plan.label,
        human_size(plan.device_size),
        plan.tool
    );
    write_marker_sector(device, view.size, &marker.encode())
        .with_context(|| format!("mark {} as being formatted", device.display()))?;
    run_mkfs(&plan, request.timeout)?;

    // Check what mkfs left before committing.
    sync_device(device)?;
    let after = read_device(device)?;
    match detect(&after.head) {
        Ok(Some(info))
            if info.fstype() == Some(plan.fstype)
                && info.label.as_deref() == Some(plan.label.as_str()) => {}
        other => bail!(
            "mkfs of {} exited 0 but the device does not read as {} labelled {} ({}); \
             it stays marked and is formatted again on the next boot",
            device.display(),
            plan.fstype,
            plan.label,
            found(&other)
        ),
    }
    write_marker_sector(device, view.size, &[0u8; MARKER_BYTES])
        .with_context(|| format!("clear the format marker of {}", device.display()))?;
    Ok(FormatReport {
        device: device.to_path_buf(),
        fstype: plan.fstype,
        label: plan.label,
        device_size: plan.device_size,
        tool: plan.tool,
        elapsed: started.elapsed(),
        was_interrupted,
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        && !std::fs::canonicalize(path).is_ok_and(|p| crate::mkfs::is_multicall_applet(&p))
}

/// Whether `path` names an executable file inside `root` as a process chrooted
/// there sees it: symlinks (`/sbin -> usr/sbin`, `mkfs.ext4 -> /usr/sbin/mke2fs`)
/// resolve inside `root`, never into ours (`openat2` with `RESOLVE_IN_ROOT`).
fn is_executable_in_root(root: &Path, path: &Path) -> bool {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let Ok(root_fd) = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
    else {
        return false;
    };
    let Ok(fd) = openat2(
        &root_fd,
        path,
        OFlags::PATH,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    ) else {
        return false;
    };
    // Where the symlinks led, as the kernel resolved them (a busybox applet is no mkfs).
    let resolved = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    rustix::fs::fstat(&fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && st.st_mode & 0o111 != 0
    }) && !resolved.is_ok_and(|p| crate::mkfs::is_multicall_applet(&p))
}

/// Write one sector at the marker's place and sync it. Opened `O_EXCL`: the
/// kernel refuses if the device is mounted.
fn write_marker_sector(device: &Path, size: u64, sector: &[u8; MARKER_BYTES]) -> Result<()> {
    let offset = marker_offset(size).context("device smaller than a sector")?;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(device)
        .with_context(|| format!("open {} for writing (exclusive)", device.display()))?;
    file.write_all_at(sector, offset)
        .with_context(|| format!("write at {offset} of {}", device.display()))?;
    file.sync_all()
        .with_context(|| format!("sync {}", device.display()))
}

fn sync_device(device: &Path) -> Result<()> {
    File::open(device)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("sync {}", device.display()))
}

/// Bind mounts made for a chrooted mkfs, undone on drop (newest first).
struct ChrootBinds(Vec<PathBuf>);

impl Drop for ChrootBinds {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            if let Err(e) = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH) {
                log::warn!("unmount {}: {e}", target.display());
            }
        }
    }
}

/// `/dev` (the device node) and `/proc` (mke2fs reads /proc/mounts to refuse
/// a mounted device) inside the chroot, bound from ours when the lower's are
/// empty. A read-only lower can take bind mounts on its existing directories.
fn bind_api_dirs(root: &Path, device: &Path) -> Result<ChrootBinds> {
    let mut binds = ChrootBinds(Vec::new());
    let needs = [
        (
            "/dev",
            root.join(device.strip_prefix("/").unwrap_or(device)),
        ),
        ("/proc", root.join("proc/self")),
    ];
    for (dir, probe) in needs {
        if probe.exists() {
            continue;
        }
        let target = root.join(dir.trim_start_matches('/'));
        if !target.is_dir() {
            bail!(
                "the lower has no {} to bind {dir} on for its mkfs",
                target.display()
            );
        }
        rustix::mount::mount_bind_recursive(dir, &target)
            .with_context(|| format!("bind {dir} on {}", target.display()))?;
        binds.0.push(target);
    }
    Ok(binds)
}

/// Run the plan's mkfs with stdin from /dev/null and its output captured; kill
/// it after `timeout`.
fn run_mkfs(plan: &FormatPlan, timeout: Duration) -> Result<()> {
    let _binds = match &plan.tool.root {
        Some(root) => Some(bind_api_dirs(root, &plan.device)?),
        None => None,
    };
    let shown = format!("{} {}", plan.tool, plan.args.join(" "));
    let (ended, output) = crate::sys::process::run_captured(&crate::sys::process::Captured {
        program: &plan.tool.program,
        args: &plan.args,
        env: &["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        root: plan.tool.root.as_deref(),
        timeout,
    })
    .with_context(|| format!("run {shown}"))?;
    match ended {
        Ended::Exited(0) => Ok(()),
        Ended::TimedOut => bail!(
            "{shown} did not finish in {} s and was killed: {}",
            timeout.as_secs(),
            output.trim()
        ),
        other => bail!("{shown} failed ({other}): {}", output.trim()),
    }
}

/// What a probe after mkfs found, for the error: `ext4 labelled "x"`, `no filesystem`, or
/// the probe's error. Display, not `Debug`: the init is built with `-Zfmt-debug=shallow`.
fn found(
    probe: &Result<Option<crate::probe::superblock::FsInfo>, crate::probe::ProbeError>,
) -> String {
    match probe {
        Ok(Some(info)) => match &info.label {
            Some(label) => format!("found {} labelled {label:?}", info.kind),
            None => format!("found {} without a label", info.kind),
        },
        Ok(None) => "found no filesystem".to_string(),
        Err(e) => format!("the probe failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::superblock::{FsInfo, FsKind};

    #[test]
    fn what_the_probe_found_is_said_in_words() {
        let ext4 = |label: Option<&str>| {
            Ok(Some(FsInfo {
                kind: FsKind::Supported(FsType::Ext4),
                label: label.map(str::to_string),
                uuid: None,
            }))
        };
        assert_eq!(found(&ext4(Some("old"))), "found ext4 labelled \"old\"");
        assert_eq!(found(&ext4(None)), "found ext4 without a label");
        assert_eq!(found(&Ok(None)), "found no filesystem");
        let err = Err(crate::probe::ProbeError::new("short read"));
        assert_eq!(found(&err), "the probe failed: short read");
    }
}
