//! Finding block devices without udev and without polling.
//!
//! [`DeviceWaiter::new`] opens the uevent socket *first* and only then walks
//! `/sys/class/block` (coldplug): a device that appears during the walk is
//! either seen by the walk or queued on the socket, never missed. Each device
//! is read once (its first [`PROBE_BYTES`], and for a partition its disk's
//! partition table) and kept as a [`BlockDevice`] in a [`DeviceSet`];
//! [`DeviceWaiter::wait_for`] then sleeps in `poll` on the socket until the
//! specs it was asked for resolve or the deadline passes.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
use rustix::io::Errno;

use crate::devices::{
    not_found_message, still_waiting_message, table_entry_for, BlockDevice, DeviceSet, Partition,
};
use crate::devspec::DeviceSpec;
use crate::probe::partition::{parse_table, table_bytes, PartEntry};
use crate::probe::superblock::{detect_with, PROBE_BYTES};
use crate::sys::uevent::{Received, UeventSocket};
use crate::uevent::{parse_sysfs, Action, Uevent};

const SYS: &str = "/sys";
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
const DEV: &str = "/dev";
/// How often a wait says what it is still waiting for.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// A spec and the one device it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    pub spec: DeviceSpec,
    /// The node to open or mount, e.g. `/dev/vda1`.
    pub dev_path: PathBuf,
    pub info: BlockDevice,
}

/// Handed to the `on_progress` callback of [`DeviceWaiter::wait_for`] every
/// [`PROGRESS_INTERVAL`] while something is still missing.
#[derive(Debug)]
pub struct WaitProgress<'a> {
    pub waited: Duration,
    pub missing: Vec<&'a DeviceSpec>,
    pub seen: &'a [BlockDevice],
}

/// A partition table as read once from a disk.
#[derive(Debug, Clone)]
struct DiskTable {
    sector_size: u32,
    /// `None` when the disk has no table (or it could not be read: logged once).
    entries: Option<Vec<PartEntry>>,
}

pub struct DeviceWaiter {
    socket: UeventSocket,
    devices: DeviceSet,
    /// Partition tables by disk DEVNAME, read once; forgotten when the disk changes.
    tables: HashMap<String, DiskTable>,
    progress_interval: Duration,
}

impl DeviceWaiter {
    /// Open the uevent socket, then learn every block device already present.
    pub fn new() -> Result<Self> {
        let socket = UeventSocket::open()?;
        let mut waiter = DeviceWaiter {
            socket,
            devices: DeviceSet::new(),
            tables: HashMap::new(),
            progress_interval: PROGRESS_INTERVAL,
        };
        waiter.coldplug()?;
        Ok(waiter)
    }

    /// How often `wait_for` reports what it still waits for (default
    /// [`PROGRESS_INTERVAL`]; tests shorten it).
    pub fn set_progress_interval(&mut self, interval: Duration) {
        self.progress_interval = interval.max(Duration::from_millis(1));
    }

    /// Every block device known now (nonzero size), in the order they were found.
    pub fn seen(&self) -> &[BlockDevice] {
        self.devices.devices()
    }

    /// Wait until every spec names exactly one device, and return them in the
    /// order of `specs`.
    ///
    /// - A spec that matches two or more devices fails at once, naming them all.
    /// - `deadline: None` waits without limit; either way, every
    ///   [`PROGRESS_INTERVAL`] the missing specs are logged and `on_progress` is called.
    /// - Events are applied as they arrive (poll on the uevent socket); nothing sleeps.
    /// - At the deadline, the error names the missing specs and lists every block
    ///   device seen with its fstype, LABEL, UUID, PARTLABEL and PARTUUID.
    pub fn wait_for(
        &mut self,
        specs: &[&DeviceSpec],
        deadline: Option<Instant>,
        mut on_progress: impl FnMut(&WaitProgress),
    ) -> Result<Vec<ResolvedDevice>> {
        let started = Instant::now();
        let mut next_report = started + self.progress_interval;
        loop {
            // Apply everything already queued before judging, so a device that
            // has just gone is not handed out.
            self.drain_queued()?;
            let missing = match self.resolve(specs)? {
                Ok(found) => {
                    for dev in &found {
                        log::info!("{} is {}", dev.spec, dev.info);
                    }
                    return Ok(found);
                }
                Err(missing) => missing,
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                bail!(not_found_message(&missing, self.seen(), now - started));
            }
            if now >= next_report {
                let waited = now - started;
                log::info!(
                    "{}",
                    still_waiting_message(&missing, waited, self.seen().len())
                );
                on_progress(&WaitProgress {
                    waited,
                    missing: missing.clone(),
                    seen: self.seen(),
                });
                while next_report <= now {
                    next_report += self.progress_interval;
                }
            }
            let wake = deadline.map_or(next_report, |d| d.min(next_report));
            match self
                .socket
                .receive(Some(wake.saturating_duration_since(now)))?
            {
                Received::Event(event) => self.handle(event),
                Received::Overflow => self.coldplug()?,
                Received::Timeout => {}
            }
        }
    }

    /// `Ok(Ok(found))` when every spec names one device, `Ok(Err(missing))` when
    /// some name none yet, `Err` when one names several.
    #[allow(clippy::type_complexity)]
    fn resolve<'s>(
        &self,
        specs: &[&'s DeviceSpec],
    ) -> Result<std::result::Result<Vec<ResolvedDevice>, Vec<&'s DeviceSpec>>> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for &spec in specs {
            match self.devices.find(spec).map_err(|e| anyhow!(e))? {
                Some(dev) => found.push(ResolvedDevice {
                    spec: spec.clone(),
                    dev_path: PathBuf::from(dev.dev_path()),
                    info: dev.clone(),
                }),
                None => missing.push(spec),
            }
        }
        Ok(if missing.is_empty() {
            Ok(found)
        } else {
            Err(missing)
        })
    }

    fn drain_queued(&mut self) -> Result<()> {
        loop {
            match self.socket.receive(Some(Duration::ZERO))? {
                Received::Event(event) => self.handle(event),
                Received::Overflow => self.coldplug()?,
                Received::Timeout => return Ok(()),
            }
        }
    }

    /// Walk /sys/class/block and (re)learn every device there. Devices that
    /// vanish during the walk are skipped; their remove event is queued.
    fn coldplug(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut names: Vec<String> = fs::read_dir(SYS_CLASS_BLOCK)
            .with_context(|| format!("coldplug: read {SYS_CLASS_BLOCK}"))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // Start from nothing: after an overflow the old picture cannot be trusted.
        self.devices = DeviceSet::new();
        self.tables.clear();
        for name in &names {
            let class_link = Path::new(SYS_CLASS_BLOCK).join(name);
            match read_sysfs_device(&class_link) {
                Ok(event) => self.handle(event),
                Err(err) => log::debug!("coldplug: skipping {name}: {err:#}"),
            }
        }
        log::debug!(
            "coldplug: {} block devices with media in {:?}",
            self.seen().len(),
            started.elapsed()
        );
        Ok(())
    }

    /// Apply one uevent (from the socket, or made up by the coldplug walk,
    /// which has no action) to the set of devices.
    fn handle(&mut self, event: Uevent) {
        let from_coldplug = event.action.is_none();
        if !from_coldplug && !event.is_block() {
            return;
        }
        let Some(name) = event.devname.clone() else {
            return;
        };
        match event.action {
            Some(Action::Remove) => {
                log::debug!("uevent: {name} removed");
                self.forget(&name, &event);
            }
            None | Some(Action::Add) | Some(Action::Change) | Some(Action::Move) => {
                if !event.is_partition() {
                    // New media, a new table, a resized loop device: read it again.
                    self.tables.remove(&name);
                }
                match self.probe(&name, &event) {
                    Ok(Some(device)) => {
                        log::debug!("found {device}");
                        self.devices.upsert(device);
                    }
                    Ok(None) => self.forget(&name, &event),
                    Err(err) => {
                        // Gone again before we could look (a loop device detached).
                        log::debug!("skipping {name}: {err:#}");
                        self.forget(&name, &event);
                    }
                }
            }
            Some(_) => {}
        }
    }

    fn forget(&mut self, name: &str, event: &Uevent) {
        if let Some(disk) = self
            .devices
            .get(name)
            .and_then(|d| d.partition.as_ref())
            .map(|p| p.disk.clone())
        {
            // A partition goes away when its disk's table is rescanned: the
            // partitions that come back must be matched against the new table.
            self.tables.remove(&disk);
        }
        self.devices.remove(name);
        if !event.is_partition() {
            self.tables.remove(name);
            self.devices.remove_partitions_of(name);
        }
    }

    /// Describe the device `event` names: `Ok(None)` when it has no media (size 0),
    /// `Err` when it vanished. A device that exists but cannot be read is kept,
    /// with the reason, so it shows in the "not found" listing and `/dev/NAME` still names it.
    fn probe(&mut self, name: &str, event: &Uevent) -> Result<Option<BlockDevice>> {
        let sysdir = Path::new(SYS).join(event.devpath.trim_start_matches('/'));
        let sectors: u64 = read_sysfs_number(&sysdir.join("size"))?;
        if sectors == 0 {
            // Unattached loop devices, card readers and cdroms without media.
            return Ok(None);
        }
        let (major, minor) = match (event.major, event.minor) {
            (Some(major), Some(minor)) => (major, minor),
            _ => bail!("{}: uevent has no MAJOR/MINOR", sysdir.display()),
        };
        let partition = if event.is_partition() {
            Some(self.partition_info(&sysdir, event))
        } else {
            None
        };
        let mut device = BlockDevice {
            name: name.to_string(),
            major,
            minor,
            size_bytes: sectors.saturating_mul(512),
            partition,
            filesystem: None,
            probe_error: None,
        };
        let head = ensure_node(name, major, minor).and_then(|node| {
            let head = crate::sys::io::read_head(&node, PROBE_BYTES)?;
            Ok((head, crate::sys::io::FileSource::open(&node)?))
        });
        match head {
            // The FAT/exFAT readers look up the root directory's label past the head.
            Ok((head, mut source)) => match detect_with(&head, &mut source) {
                Ok(fs) => device.filesystem = fs,
                Err(err) => device.probe_error = Some(format!("superblock: {err}")),
            },
            Err(err) => device.probe_error = Some(format!("{err:#}")),
        }
        Ok(Some(device))
    }

    /// The partition's number, disk, and what the disk's table says about it.
    fn partition_info(&mut self, sysdir: &Path, event: &Uevent) -> Partition {
        let number = event.partn.unwrap_or(0);
        // A partition's sysfs directory sits inside its disk's.
        let disk = sysdir
            .parent()
            .and_then(|dir| match read_sysfs_device(dir) {
                Ok(disk_event) => disk_event
                    .devname
                    .clone()
                    .map(|n| (n, disk_event, dir.to_path_buf())),
                Err(err) => {
                    log::debug!("{}: cannot read its disk: {err:#}", sysdir.display());
                    None
                }
            });
        let Some((disk_name, disk_event, disk_dir)) = disk else {
            return Partition {
                number,
                disk: String::new(),
                partuuid: None,
                partlabel: event.partname.clone(),
            };
        };
        let table = self.table(&disk_name, &disk_event, &disk_dir);
        let start: Option<u64> = read_sysfs_number(&sysdir.join("start")).ok();
        let entry = table
            .entries
            .as_deref()
            .and_then(|entries| table_entry_for(entries, number, start, table.sector_size));
        Partition {
            number,
            disk: disk_name,
            partuuid: entry.map(|e| e.partuuid.to_ascii_lowercase()),
            // The kernel's PARTNAME is there only when its own parser knows the
            // table; ours is read from the disk either way.
            partlabel: entry
                .and_then(|e| e.name.clone())
                .or_else(|| event.partname.clone()),
        }
    }

    /// The disk's partition table, read on first use.
    fn table(&mut self, disk: &str, disk_event: &Uevent, disk_dir: &Path) -> DiskTable {
        if let Some(table) = self.tables.get(disk) {
            return table.clone();
        }
        let sector_size: u32 =
            read_sysfs_number(&disk_dir.join("queue/logical_block_size")).unwrap_or(512);
        let entries = match (disk_event.major, disk_event.minor) {
            (Some(major), Some(minor)) => ensure_node(disk, major, minor)
                .and_then(|node| crate::sys::io::read_head(&node, table_bytes(sector_size)))
                .and_then(|head| {
                    parse_table(&head, sector_size)
                        .map_err(|e| anyhow!("/dev/{disk}: partition table: {e}"))
                }),
            _ => Err(anyhow!("{}: uevent has no MAJOR/MINOR", disk_dir.display())),
        };
        let entries = entries.unwrap_or_else(|err| {
            log::warn!("no PARTUUID/PARTLABEL for the partitions of {disk}: {err:#}");
            None
        });
        let table = DiskTable {
            sector_size,
            entries,
        };
        self.tables.insert(disk.to_string(), table.clone());
        table
    }
}

/// Read a device's sysfs `uevent` file. `dir` is a /sys/class/block link or a
/// /sys/devices directory; the DEVPATH is its canonical path below /sys.
fn read_sysfs_device(dir: &Path) -> Result<Uevent> {
    let real = fs::canonicalize(dir).with_context(|| format!("resolve {}", dir.display()))?;
    let devpath = real
        .strip_prefix(SYS)
        .with_context(|| format!("{} is not below {SYS}", real.display()))?;
    let uevent_file = real.join("uevent");
    let text = fs::read_to_string(&uevent_file)
        .with_context(|| format!("read {}", uevent_file.display()))?;
    let mut event = parse_sysfs(&format!("/{}", devpath.display()), &text);
    event.subsystem = Some("block".into());
    Ok(event)
}

fn read_sysfs_number<T: std::str::FromStr>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| anyhow!("{}: {:?} is not a number", path.display(), text.trim()))
}

/// The device node for `name`, created when missing.
///
/// With devtmpfs on /dev (what the init mounts) the kernel creates the node
/// before it sends the add event, so this is a check. The node can be missing
/// when /dev is a plain directory or tmpfs (a kernel without
/// CONFIG_DEVTMPFS, a hand-made initramfs /dev): then mknod it from the
/// MAJOR:MINOR the kernel reported, so probing and mounting work the same way.
/// A node that exists but is another device is an error rather than a guess.
fn ensure_node(name: &str, major: u32, minor: u32) -> Result<PathBuf> {
    let node = Path::new(DEV).join(name);
    match rustix::fs::stat(&node) {
        Ok(st) => {
            let is_block = FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice;
            if is_block && st.st_rdev == makedev(major, minor) {
                Ok(node)
            } else {
                bail!(
                    "{} exists but is not block device {major}:{minor}",
                    node.display()
                )
            }
        }
        Err(Errno::NOENT) => {
            if let Some(parent) = node.parent() {
                // DEVNAME may hold a directory, e.g. `mapper/root`.
                fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            log::debug!(
                "creating {} ({major}:{minor}): devtmpfs did not",
                node.display()
            );
            match mknodat(
                CWD,
                &node,
                FileType::BlockDevice,
                Mode::from_raw_mode(0o600),
                makedev(major, minor),
            ) {
                // Raced with devtmpfs: fine, it is the kernel's node.
                Ok(()) | Err(Errno::EXIST) => Ok(node),
                Err(err) => Err(io::Error::from(err))
                    .with_context(|| format!("mknod {} {major}:{minor}", node.display())),
            }
        }
        Err(err) => Err(io::Error::from(err)).with_context(|| format!("stat {}", node.display())),
    }
}

/// Whether `path` is a block device node whose device is there now with a
/// nonzero size (a media-less drive or an unbound loop device is not).
pub fn is_live_block_device(path: &Path) -> bool {
    let Ok(st) = rustix::fs::stat(path) else {
        return false;
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::BlockDevice {
        return false;
    }
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    std::fs::read_to_string(format!("{SYS}/dev/block/{major}:{minor}/size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|sectors| sectors > 0)
}
