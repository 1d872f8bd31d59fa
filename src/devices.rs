//! The block devices seen so far, and matching a [`DeviceSpec`] against them.
//!
//! Pure: `sys::blockdev` fills a [`DeviceSet`] from the coldplug walk and from
//! uevents; this module decides which device a spec names, and words the two
//! errors a user can meet: a spec that names two devices, and a spec that names
//! none of the devices that appeared.

use std::fmt;
use std::time::Duration;

use crate::devspec::DeviceSpec;
use crate::probe::partition::PartEntry;
use crate::probe::superblock::{FsInfo, FsKind};

/// Where a partition sits and what its table says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as in the kernel's PARTN.
    pub number: u32,
    /// DEVNAME of the whole disk, e.g. `vda`.
    pub disk: String,
    /// From the disk's partition table: GPT GUID or MBR `ssssssss-pp`, lower-case.
    pub partuuid: Option<String>,
    /// GPT partition name (the table's, else the kernel's PARTNAME).
    pub partlabel: Option<String>,
}

/// One block device as overlay-init knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// DEVNAME: the node below /dev, e.g. `vda1`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    /// `None` for a whole disk.
    pub partition: Option<Partition>,
    /// What the superblock says; `None` when no filesystem was recognised.
    pub filesystem: Option<FsInfo>,
    /// Why the device could not be read or probed, for the "not found" listing.
    pub probe_error: Option<String>,
}

impl BlockDevice {
    pub fn dev_path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    pub fn label(&self) -> Option<&str> {
        self.filesystem.as_ref()?.label.as_deref()
    }

    pub fn uuid(&self) -> Option<&str> {
        self.filesystem.as_ref()?.uuid.as_deref()
    }

    pub fn partuuid(&self) -> Option<&str> {
        self.partition.as_ref()?.partuuid.as_deref()
    }

    pub fn partlabel(&self) -> Option<&str> {
        self.partition.as_ref()?.partlabel.as_deref()
    }

    /// Whether `spec` names this device. Labels compare exactly (they are
    /// case-sensitive on disk); UUIDs compare without regard to case.
    pub fn matches(&self, spec: &DeviceSpec) -> bool {
        match spec {
            DeviceSpec::Path(path) => path.strip_prefix("/dev/") == Some(self.name.as_str()),
            DeviceSpec::Label(label) => self.label() == Some(label.as_str()),
            DeviceSpec::Uuid(uuid) => self.uuid().is_some_and(|u| u.eq_ignore_ascii_case(uuid)),
            DeviceSpec::PartUuid(uuid) => self
                .partuuid()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid)),
            DeviceSpec::PartLabel(label) => self.partlabel() == Some(label.as_str()),
        }
    }
}

/// The filesystem's name as blkid would print it.
pub fn fs_kind_name(kind: &FsKind) -> &'static str {
    kind.name()
}

/// A byte count for people: `512 B`, `64.0 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while bytes / scale >= 1024 && unit + 1 < UNITS.len() {
        scale *= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{} {}", crate::decimal::in_unit(bytes, scale), UNITS[unit])
    }
}

/// One line per device: `/dev/vda1 (64.0 MiB, partition 1 of vda): ext4 LABEL="x" UUID=... PARTLABEL="y" PARTUUID=...`.
impl fmt::Display for BlockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.dev_path(), human_size(self.size_bytes))?;
        if let Some(p) = &self.partition {
            write!(f, ", partition {} of {}", p.number, p.disk)?;
        }
        f.write_str("):")?;
        match (&self.filesystem, &self.probe_error) {
            (Some(fs), _) => {
                write!(f, " {}", fs_kind_name(&fs.kind))?;
                if let Some(label) = &fs.label {
                    write!(f, " LABEL={label:?}")?;
                }
                if let Some(uuid) = &fs.uuid {
                    write!(f, " UUID={uuid}")?;
                }
            }
            (None, Some(err)) => write!(f, " unreadable ({err})")?,
            (None, None) => f.write_str(" no filesystem recognised")?,
        }
        if let Some(label) = self.partlabel() {
            write!(f, " PARTLABEL={label:?}")?;
        }
        if let Some(uuid) = self.partuuid() {
            write!(f, " PARTUUID={uuid}")?;
        }
        Ok(())
    }
}

/// A spec that names more than one device: booting either could be wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmbiguousSpec {
    pub spec: DeviceSpec,
    pub matches: Vec<BlockDevice>,
}

impl fmt::Display for AmbiguousSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.matches.iter().map(BlockDevice::dev_path).collect();
        write!(
            f,
            "{} matches {} devices ({}); refusing to guess:",
            self.spec,
            self.matches.len(),
            names.join(" and ")
        )?;
        for dev in &self.matches {
            write!(f, "\n  {dev}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AmbiguousSpec {}

/// The block devices present now, one entry per DEVNAME, in the order they appeared.
#[derive(Debug, Clone, Default)]
pub struct DeviceSet {
    devices: Vec<BlockDevice>,
}

impl DeviceSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a device, or replace what was known under its name (a `change` event
    /// after new media or a new filesystem).
    pub fn upsert(&mut self, device: BlockDevice) {
        match self.devices.iter_mut().find(|d| d.name == device.name) {
            Some(slot) => *slot = device,
            None => self.devices.push(device),
        }
    }

    /// Forget a device; returns whether it was known.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.devices.len();
        self.devices.retain(|d| d.name != name);
        self.devices.len() != before
    }

    /// Forget the partitions of `disk` (its table changed or it went away).
    pub fn remove_partitions_of(&mut self, disk: &str) {
        self.devices
            .retain(|d| d.partition.as_ref().is_none_or(|p| p.disk != disk));
    }

    pub fn devices(&self) -> &[BlockDevice] {
        &self.devices
    }

    pub fn get(&self, name: &str) -> Option<&BlockDevice> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The one device `spec` names: `Ok(None)` while none has appeared, an error
    /// naming every match when there are several.
    pub fn find(&self, spec: &DeviceSpec) -> Result<Option<&BlockDevice>, AmbiguousSpec> {
        let mut found = self.devices.iter().filter(|d| d.matches(spec));
        let Some(first) = found.next() else {
            return Ok(None);
        };
        let rest: Vec<&BlockDevice> = found.collect();
        if rest.is_empty() {
            return Ok(Some(first));
        }
        Err(AmbiguousSpec {
            spec: spec.clone(),
            matches: std::iter::once(first).chain(rest).cloned().collect(),
        })
    }
}

/// The entry of a disk's partition table that describes the kernel's partition
/// number `partn`. When the kernel's start sector is known (sysfs `start`, in
/// 512-byte units) it must agree too: a table rewritten since the kernel last
/// scanned it describes partitions that are not the ones a mount would open.
pub fn table_entry_for(
    entries: &[PartEntry],
    partn: u32,
    start_512: Option<u64>,
    sector_size: u32,
) -> Option<&PartEntry> {
    let sectors_per_lba = u64::from(sector_size / 512).max(1);
    entries.iter().find(|e| {
        e.number == partn
            && start_512.is_none_or(|start| e.first_lba.checked_mul(sectors_per_lba) == Some(start))
    })
}

/// The message for specs that matched nothing before the deadline: what was
/// missing, how long we waited, and every block device that did appear.
pub fn not_found_message(
    missing: &[&DeviceSpec],
    seen: &[BlockDevice],
    waited: Duration,
) -> String {
    let names: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    let mut msg = format!(
        "no block device matches {} after waiting {}s; ",
        names.join(", "),
        crate::decimal::secs(waited, 1)
    );
    if seen.is_empty() {
        msg.push_str("no block devices were seen at all (missing driver or kernel module?)");
    } else {
        msg.push_str(&format!("{} block devices were seen:", seen.len()));
        for dev in seen {
            msg.push_str(&format!("\n  {dev}"));
        }
    }
    msg
}

/// The line logged while waiting: which specs are still missing.
pub fn still_waiting_message(missing: &[&DeviceSpec], waited: Duration, seen: usize) -> String {
    let names: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    format!(
        "still waiting for {} ({}s so far, {seen} block devices seen)",
        names.join(", "),
        waited.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fstype::FsType;

    fn disk(name: &str) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            major: 254,
            minor: 0,
            size_bytes: 1 << 30,
            partition: None,
            filesystem: None,
            probe_error: None,
        }
    }

    fn with_fs(
        mut dev: BlockDevice,
        kind: FsKind,
        label: Option<&str>,
        uuid: Option<&str>,
    ) -> BlockDevice {
        dev.filesystem = Some(FsInfo {
            kind,
            label: label.map(Into::into),
            uuid: uuid.map(Into::into),
        });
        dev
    }

    fn part(
        name: &str,
        disk: &str,
        number: u32,
        partuuid: Option<&str>,
        partlabel: Option<&str>,
    ) -> BlockDevice {
        BlockDevice {
            partition: Some(Partition {
                number,
                disk: disk.into(),
                partuuid: partuuid.map(Into::into),
                partlabel: partlabel.map(Into::into),
            }),
            size_bytes: 64 << 20,
            ..super::tests::disk(name)
        }
    }

    /// A GPT disk with a squashfs root and an ext4 data partition, an MBR disk,
    /// and an unpartitioned erofs disk.
    fn sample_set() -> DeviceSet {
        let mut set = DeviceSet::new();
        set.upsert(disk("vda"));
        set.upsert(with_fs(
            part(
                "vda1",
                "vda",
                1,
                Some("0fc63daf-8483-4772-8e79-3d69d8477de4"),
                Some("rootfs"),
            ),
            FsKind::Supported(FsType::Squashfs),
            None,
            None,
        ));
        set.upsert(with_fs(
            part(
                "vda2",
                "vda",
                2,
                Some("9a1e2b3c-0000-4000-8000-00000000beef"),
                Some("rootfs_data"),
            ),
            FsKind::Supported(FsType::Ext4),
            Some("data"),
            Some("5e1f3c2a-7b6d-4e8f-9a0b-1c2d3e4f5a6b"),
        ));
        set.upsert(disk("vdb"));
        set.upsert(with_fs(
            part("vdb1", "vdb", 1, Some("0badcafe-01"), None),
            FsKind::Other("vfat"),
            Some("EFI"),
            Some("ABCD-1234"),
        ));
        set.upsert(with_fs(
            disk("vdc"),
            FsKind::Supported(FsType::Erofs),
            Some("lower2"),
            Some("11111111-2222-3333-4444-555555555555"),
        ));
        set
    }

    fn find_name(set: &DeviceSet, spec: &str) -> Option<String> {
        let spec = DeviceSpec::parse(spec).unwrap();
        set.find(&spec).unwrap().map(|d| d.name.clone())
    }

    #[test]
    fn finds_by_every_kind_of_spec() {
        let set = sample_set();
        assert_eq!(find_name(&set, "/dev/vda2").as_deref(), Some("vda2"));
        assert_eq!(find_name(&set, "/dev/vdb").as_deref(), Some("vdb"));
        assert_eq!(find_name(&set, "LABEL=data").as_deref(), Some("vda2"));
        assert_eq!(find_name(&set, "LABEL=lower2").as_deref(), Some("vdc"));
        assert_eq!(
            find_name(&set, "UUID=5e1f3c2a-7b6d-4e8f-9a0b-1c2d3e4f5a6b").as_deref(),
            Some("vda2")
        );
        assert_eq!(
            find_name(&set, "PARTUUID=0fc63daf-8483-4772-8e79-3d69d8477de4").as_deref(),
            Some("vda1")
        );
        assert_eq!(
            find_name(&set, "PARTLABEL=rootfs_data").as_deref(),
            Some("vda2")
        );
        assert_eq!(find_name(&set, "PARTLABEL=rootfs").as_deref(), Some("vda1"));
    }

    #[test]
    fn mbr_partuuid_form_matches() {
        let set = sample_set();
        assert_eq!(
            find_name(&set, "PARTUUID=0BADCAFE-01").as_deref(),
            Some("vdb1")
        );
        assert_eq!(find_name(&set, "PARTUUID=0badcafe-02"), None);
        // Not a prefix match: the disk signature alone names no partition.
        assert_eq!(find_name(&set, "PARTUUID=0badcafe"), None);
    }

    #[test]
    fn uuid_ignores_case_label_does_not() {
        let set = sample_set();
        // vfat UUIDs are printed upper-case by some tools; the spec is stored lower-case.
        assert_eq!(find_name(&set, "UUID=abcd-1234").as_deref(), Some("vdb1"));
        assert_eq!(
            find_name(&set, "UUID=5E1F3C2A-7B6D-4E8F-9A0B-1C2D3E4F5A6B").as_deref(),
            Some("vda2")
        );
        assert_eq!(find_name(&set, "LABEL=DATA"), None);
        assert_eq!(find_name(&set, "PARTLABEL=ROOTFS"), None);
    }

    #[test]
    fn kinds_do_not_cross() {
        let set = sample_set();
        // A partition name is not a filesystem label and the other way round.
        assert_eq!(find_name(&set, "LABEL=rootfs_data"), None);
        assert_eq!(find_name(&set, "PARTLABEL=data"), None);
        // A filesystem UUID is not a PARTUUID.
        assert_eq!(
            find_name(&set, "PARTUUID=5e1f3c2a-7b6d-4e8f-9a0b-1c2d3e4f5a6b"),
            None
        );
        assert_eq!(
            find_name(&set, "UUID=0fc63daf-8483-4772-8e79-3d69d8477de4"),
            None
        );
        // A path names a node exactly, not a prefix.
        assert_eq!(find_name(&set, "/dev/vd"), None);
        assert_eq!(find_name(&set, "/dev/vda3"), None);
    }

    #[test]
    fn two_matches_are_an_error_naming_both() {
        let mut set = sample_set();
        set.upsert(with_fs(
            disk("sda"),
            FsKind::Supported(FsType::Ext4),
            Some("data"),
            Some("99999999-2222-3333-4444-555555555555"),
        ));
        let spec = DeviceSpec::parse("LABEL=data").unwrap();
        let err = set.find(&spec).unwrap_err();
        let names: Vec<&str> = err.matches.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda2", "sda"]);
        let msg = err.to_string();
        assert!(
            msg.starts_with("LABEL=data matches 2 devices (/dev/vda2 and /dev/sda)"),
            "{msg}"
        );
        assert!(
            msg.contains("UUID=99999999-2222-3333-4444-555555555555"),
            "{msg}"
        );
        assert!(
            msg.contains("UUID=5e1f3c2a-7b6d-4e8f-9a0b-1c2d3e4f5a6b"),
            "{msg}"
        );
    }

    #[test]
    fn upsert_replaces_and_remove_forgets() {
        let mut set = sample_set();
        let before = set.devices().len();
        // New media in vdc: a change event re-probes it.
        set.upsert(with_fs(
            disk("vdc"),
            FsKind::Supported(FsType::Ext4),
            Some("new"),
            None,
        ));
        assert_eq!(set.devices().len(), before);
        assert_eq!(find_name(&set, "LABEL=lower2"), None);
        assert_eq!(find_name(&set, "LABEL=new").as_deref(), Some("vdc"));

        assert!(set.remove("vdc"));
        assert!(!set.remove("vdc"));
        assert_eq!(find_name(&set, "LABEL=new"), None);

        set.remove_partitions_of("vda");
        assert!(set.get("vda").is_some());
        assert!(set.get("vda1").is_none() && set.get("vda2").is_none());
        assert!(set.get("vdb1").is_some());
    }

    #[test]
    fn display_lists_what_a_user_needs() {
        let set = sample_set();
        let line = set.get("vda2").unwrap().to_string();
        assert_eq!(
            line,
            "/dev/vda2 (64.0 MiB, partition 2 of vda): ext4 LABEL=\"data\" \
             UUID=5e1f3c2a-7b6d-4e8f-9a0b-1c2d3e4f5a6b PARTLABEL=\"rootfs_data\" \
             PARTUUID=9a1e2b3c-0000-4000-8000-00000000beef"
        );
        assert_eq!(
            set.get("vda").unwrap().to_string(),
            "/dev/vda (1.0 GiB): no filesystem recognised"
        );
        let mut broken = disk("sr0");
        broken.size_bytes = 700;
        broken.probe_error = Some("read /dev/sr0: Input/output error".into());
        assert_eq!(
            broken.to_string(),
            "/dev/sr0 (700 B): unreadable (read /dev/sr0: Input/output error)"
        );
    }

    #[test]
    fn not_found_message_lists_every_device_seen() {
        let set = sample_set();
        let missing = DeviceSpec::parse("LABEL=nothere").unwrap();
        let upper = DeviceSpec::parse("PARTLABEL=gone").unwrap();
        let msg = not_found_message(
            &[&missing, &upper],
            set.devices(),
            Duration::from_millis(10_500),
        );
        assert!(
            msg.starts_with("no block device matches LABEL=nothere, PARTLABEL=gone after waiting 10.5s; 6 block devices were seen:"),
            "{msg}"
        );
        for dev in set.devices() {
            assert!(msg.contains(&format!("\n  {dev}")), "{msg}");
        }
        assert!(
            msg.contains("vfat LABEL=\"EFI\" UUID=ABCD-1234 PARTUUID=0badcafe-01"),
            "{msg}"
        );

        let empty = not_found_message(&[&missing], &[], Duration::from_secs(3));
        assert!(
            empty.contains("no block devices were seen at all"),
            "{empty}"
        );
    }

    fn entry(number: u32, first_lba: u64) -> PartEntry {
        PartEntry {
            number,
            partuuid: format!("0badcafe-{number:02}"),
            name: None,
            first_lba,
            last_lba: first_lba + 100,
        }
    }

    #[test]
    fn table_entry_is_found_by_number_and_start() {
        let table = [entry(1, 2048), entry(2, 10240)];
        assert_eq!(
            table_entry_for(&table, 2, Some(10240), 512),
            Some(&table[1])
        );
        assert_eq!(table_entry_for(&table, 2, None, 512), Some(&table[1]));
        assert_eq!(table_entry_for(&table, 3, None, 512), None);
        // The kernel's partition 2 starts elsewhere: the table on disk is newer.
        assert_eq!(table_entry_for(&table, 2, Some(4096), 512), None);
        // 4 KiB sectors: sysfs still counts 512-byte units.
        assert_eq!(
            table_entry_for(&table, 1, Some(2048 * 8), 4096),
            Some(&table[0])
        );
        assert_eq!(table_entry_for(&table, 1, Some(2048), 4096), None);
    }

    #[test]
    fn still_waiting_names_the_missing_specs() {
        let spec = DeviceSpec::parse("PARTUUID=0badcafe-02").unwrap();
        assert_eq!(
            still_waiting_message(&[&spec], Duration::from_millis(15_200), 4),
            "still waiting for PARTUUID=0badcafe-02 (15s so far, 4 block devices seen)"
        );
    }
}
