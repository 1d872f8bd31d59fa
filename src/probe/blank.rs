//! Is a persistent upper device blank (ours to format), ours but half-formatted,
//! somebody else's, or a filesystem that can hold an upper? Pure over the first
//! and last MiB of the device.
//!
//! Blank means: no filesystem, partition-table, RAID or LUKS signature that the
//! probe knows, and the first and the last MiB each all `0x00` (a zeroed disk) or
//! all `0xFF` (erased flash); or the device starts with OpenWrt's `deadc0de`
//! marker (what sysupgrade leaves at the start of an empty `rootfs_data`).
//!
//! # A power cut during the format
//!
//! `mke2fs` writes its primary superblock last, but it zeroes sectors 0-7 and the
//! last 64 KiB and writes group descriptors, bitmaps and the root directory into
//! the first MiB long before that: a device whose format was cut short is neither
//! blank nor ext4. So the formatter keeps a [`FormatMarker`] in the device's last
//! 512-byte sector, outside the filesystem (which is made [`RESERVED_TAIL`] bytes
//! shorter than the device, so mkfs never touches the marker):
//!
//! 1. the device classifies as [`Classification::Blank`] (or `Interrupted`);
//! 2. the marker is written and synced (one sector: written whole or not at all);
//! 3. mkfs runs, then everything is synced;
//! 4. the new filesystem is probed (right type and label), then the marker is
//!    cleared (zeroed) and synced: that is the commit.
//!
//! A cut before 2 leaves a blank device; between 2 and 4 the marker is there and
//! the device classifies as [`Classification::Interrupted`] (formatted again,
//! whatever mkfs left, even a complete filesystem: it was never used); after 4
//! it is a complete filesystem. Only a blank device ever gets the marker, so a
//! foreign device is never taken for an interrupted format.

use super::bytes::{le32, le64, slice};
use super::crc::crc32;
use super::partition::parse_table;
use super::superblock::{detect, detect_tail, FsInfo, FsKind};
use crate::fstype::FsType;

/// How much of each end of the device [`classify`] looks at.
pub const EDGE_BYTES: usize = 1 << 20;

/// Bytes at the end of the device kept out of the filesystem for the marker
/// (mke2fs zeroes the last 64 KiB of the filesystem early, to kill stale RAID
/// superblocks; a 4 KiB-aligned filesystem end then leaves the marker alone).
pub const RESERVED_TAIL: u64 = 64 * 1024;

/// The marker's size: one sector, the unit a disk writes atomically.
pub const MARKER_BYTES: usize = 512;

/// OpenWrt's "format me" marker at the start of an empty `rootfs_data`.
pub const DEADC0DE: [u8; 4] = [0xde, 0xad, 0xc0, 0xde];

const MARKER_MAGIC: &[u8; 16] = b"OVLINIT-FORMAT\0\x01";
const MARKER_CRC: usize = MARKER_BYTES - 4;

/// Why a device counts as blank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlankKind {
    /// The first and last MiB are all `0x00`.
    Zeroed,
    /// All `0xFF` (erased flash), or `0x00` at one end and `0xFF` at the other.
    Erased,
    /// Starts with OpenWrt's `deadc0de` marker.
    DeadC0de,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// Nothing on it: format it.
    Blank(BlankKind),
    /// Our own format started and was never confirmed: format it again.
    Interrupted(FormatMarker),
    /// A filesystem that can hold an upper (ext4, f2fs): mount it.
    Usable(FsInfo),
    /// Anything else: never written. Says what was found, e.g. "vfat",
    /// "crypto_LUKS", "a partition table", "data that is neither zeroed nor erased".
    Foreign(String),
}

impl Classification {
    /// Whether `ovl.format=blank` may format the device.
    pub fn may_format(&self) -> bool {
        matches!(
            self,
            Classification::Blank(_) | Classification::Interrupted(_)
        )
    }
}

/// The device as [`classify`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Edges<'a> {
    /// The first bytes (up to [`EDGE_BYTES`]; all of them for a small device).
    pub head: &'a [u8],
    /// The last bytes (up to [`EDGE_BYTES`]), ending at `size`.
    pub tail: &'a [u8],
    /// The device's size in bytes.
    pub size: u64,
    /// Logical sector size, for the partition-table reader.
    pub sector_size: u32,
}

/// Where the first and last MiB of a device of `size` bytes start:
/// `(head_len, tail_offset, tail_len)`. They overlap on a device under 2 MiB.
pub fn edge_ranges(size: u64) -> (usize, u64, usize) {
    let len = size.min(EDGE_BYTES as u64) as usize;
    (len, size - len as u64, len)
}

/// How much of the head and tail [`classify_usable`] needs: the superblock
/// probe's bytes, and the last 4 KiB (the format marker's sector, whatever the
/// logical sector size).
pub const QUICK_HEAD_BYTES: usize = crate::probe::superblock::PROBE_BYTES;
pub const QUICK_TAIL_BYTES: usize = 4096;

/// The usual boot's answer from a short read ([`QUICK_HEAD_BYTES`] and
/// [`QUICK_TAIL_BYTES`]): `Some(Usable)` for a device that already holds an
/// upper filesystem and no format marker, which [`classify`] would call the
/// same; `None` when only the whole edges can tell (blank, foreign, ours cut
/// short). Saves reading 2 MiB on every boot.
pub fn classify_usable(edges: Edges<'_>) -> Option<Classification> {
    if find_marker(edges.tail, edges.size).is_some() {
        return None;
    }
    match detect(edges.head) {
        Ok(Some(info)) if matches!(info.kind, FsKind::Supported(t) if t.can_be_upper()) => {
            Some(Classification::Usable(info))
        }
        _ => None,
    }
}

/// Classify a would-be upper device. See the module documentation.
pub fn classify(edges: Edges<'_>) -> Classification {
    if let Some(marker) = find_marker(edges.tail, edges.size) {
        return Classification::Interrupted(marker);
    }
    match detect(edges.head) {
        Ok(Some(info)) => {
            return match info.kind {
                FsKind::Supported(t) if t.can_be_upper() => Classification::Usable(info),
                FsKind::Supported(t) => Classification::Foreign(format!("{t} (read-only)")),
                FsKind::Other(name) => Classification::Foreign(name.to_string()),
            }
        }
        Ok(None) => {}
        Err(e) => return Classification::Foreign(e.to_string()),
    }
    if let Some(name) = detect_tail(edges.tail, edges.size) {
        return Classification::Foreign(name.to_string());
    }
    match parse_table(edges.head, edges.sector_size) {
        Ok(Some(_)) => return Classification::Foreign("a partition table".into()),
        Ok(None) => {}
        Err(e) => return Classification::Foreign(format!("a partition table ({e})")),
    }
    if edges.head.starts_with(&DEADC0DE) {
        return Classification::Blank(BlankKind::DeadC0de);
    }
    match (uniform(edges.head), uniform(edges.tail)) {
        (Some(0x00), Some(0x00)) => Classification::Blank(BlankKind::Zeroed),
        (Some(_), Some(_)) => Classification::Blank(BlankKind::Erased),
        (None, _) => Classification::Foreign(
            "data in the first MiB that is neither zeroed nor erased".into(),
        ),
        (_, None) => {
            Classification::Foreign("data in the last MiB that is neither zeroed nor erased".into())
        }
    }
}

/// `Some(byte)` when every byte is that `0x00` or `0xFF` (an empty slice is not uniform).
fn uniform(bytes: &[u8]) -> Option<u8> {
    let first = *bytes.first()?;
    ((first == 0x00 || first == 0xFF) && bytes.iter().all(|&b| b == first)).then_some(first)
}

/// "A format of this device to `fstype` started": kept in the device's last
/// sector while mkfs runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatMarker {
    /// The device size the marker was written for (a marker copied onto another
    /// device does not count).
    pub device_size: u64,
    /// The filesystem size given to mkfs.
    pub fs_size: u64,
    pub fstype: FsType,
}

impl FormatMarker {
    /// The marker sector: magic, device size, filesystem size, fstype name, CRC32.
    pub fn encode(&self) -> [u8; MARKER_BYTES] {
        let mut sector = [0u8; MARKER_BYTES];
        sector[..16].copy_from_slice(MARKER_MAGIC);
        sector[16..24].copy_from_slice(&self.device_size.to_le_bytes());
        sector[24..32].copy_from_slice(&self.fs_size.to_le_bytes());
        let name = self.fstype.kernel_name().as_bytes();
        sector[32..32 + name.len()].copy_from_slice(name);
        let crc = crc32(&sector[..MARKER_CRC]);
        sector[MARKER_CRC..].copy_from_slice(&crc.to_le_bytes());
        sector
    }

    /// The marker in `sector`, if it is one (magic and CRC right).
    pub fn decode(sector: &[u8]) -> Option<FormatMarker> {
        let sector = slice(sector, 0, MARKER_BYTES)?;
        if &sector[..16] != MARKER_MAGIC
            || le32(sector, MARKER_CRC)? != crc32(&sector[..MARKER_CRC])
        {
            return None;
        }
        let name = &sector[32..48];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(FormatMarker {
            device_size: le64(sector, 16)?,
            fs_size: le64(sector, 24)?,
            fstype: FsType::parse(std::str::from_utf8(&name[..end]).ok()?)?,
        })
    }
}

/// Byte offset of the marker sector on a device of `size` bytes.
pub fn marker_offset(size: u64) -> Option<u64> {
    (size / MARKER_BYTES as u64)
        .checked_sub(1)
        .map(|sector| sector * MARKER_BYTES as u64)
}

/// The filesystem size the formatter gives mkfs: the device less
/// [`RESERVED_TAIL`], rounded down to 4 KiB.
pub fn fs_size_for(device_size: u64) -> Option<u64> {
    device_size
        .checked_sub(RESERVED_TAIL)
        .map(|size| size & !4095)
        .filter(|&size| size > 0)
}

fn find_marker(tail: &[u8], size: u64) -> Option<FormatMarker> {
    let tail_start = size.checked_sub(tail.len() as u64)?;
    let at = usize::try_from(marker_offset(size)?.checked_sub(tail_start)?).ok()?;
    FormatMarker::decode(slice(tail, at, MARKER_BYTES)?).filter(|m| m.device_size == size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXT4: &[u8] = include_bytes!("../../tests/fixtures/probe/ext4.img");
    const F2FS: &[u8] = include_bytes!("../../tests/fixtures/probe/f2fs.img");
    const GPT: &[u8] = include_bytes!("../../tests/fixtures/probe/gpt.img");
    const SQUASHFS: &[u8] = include_bytes!("../../tests/fixtures/probe/squashfs.img");
    const SIZE: u64 = 64 << 20;

    /// A 64 MiB device filled with `fill`, with `head` at its start and `tail`
    /// patches at absolute offsets.
    struct Device {
        head: Vec<u8>,
        tail: Vec<u8>,
        size: u64,
    }

    impl Device {
        fn filled(fill: u8) -> Device {
            Device {
                head: vec![fill; EDGE_BYTES],
                tail: vec![fill; EDGE_BYTES],
                size: SIZE,
            }
        }

        fn with_head(mut self, bytes: &[u8]) -> Device {
            self.head[..bytes.len()].copy_from_slice(bytes);
            self
        }

        fn poke(mut self, offset: u64, bytes: &[u8]) -> Device {
            let tail_start = self.size - self.tail.len() as u64;
            if offset < self.head.len() as u64 {
                let at = offset as usize;
                self.head[at..at + bytes.len()].copy_from_slice(bytes);
            }
            if offset >= tail_start {
                let at = (offset - tail_start) as usize;
                self.tail[at..at + bytes.len()].copy_from_slice(bytes);
            }
            self
        }

        /// What [`classify_usable`] says from the short read of this device.
        fn quick(&self) -> Option<Classification> {
            classify_usable(Edges {
                head: &self.head[..QUICK_HEAD_BYTES],
                tail: &self.tail[self.tail.len() - QUICK_TAIL_BYTES..],
                size: self.size,
                sector_size: 512,
            })
        }

        fn classify(&self) -> Classification {
            classify(Edges {
                head: &self.head,
                tail: &self.tail,
                size: self.size,
                sector_size: 512,
            })
        }
    }

    fn foreign(device: &Device) -> String {
        match device.classify() {
            Classification::Foreign(what) => what,
            other => panic!("expected foreign, got {other:?}"),
        }
    }

    fn marker(fstype: FsType) -> FormatMarker {
        FormatMarker {
            device_size: SIZE,
            fs_size: fs_size_for(SIZE).unwrap(),
            fstype,
        }
    }

    #[test]
    fn zeroed_and_erased_devices_are_blank() {
        let zeroed = Device::filled(0x00).classify();
        assert_eq!(zeroed, Classification::Blank(BlankKind::Zeroed));
        assert!(zeroed.may_format());
        let erased = Device::filled(0xFF).classify();
        assert_eq!(erased, Classification::Blank(BlankKind::Erased));
        let mut mixed = Device::filled(0x00);
        mixed.tail = vec![0xFF; EDGE_BYTES];
        assert_eq!(mixed.classify(), Classification::Blank(BlankKind::Erased));
    }

    #[test]
    fn one_stray_byte_at_either_end_is_foreign() {
        for fill in [0x00, 0xFF] {
            for offset in [
                0,
                4095,
                EDGE_BYTES as u64 - 1,
                SIZE - EDGE_BYTES as u64,
                SIZE - 1,
            ] {
                let device = Device::filled(fill).poke(offset, &[0x5A]);
                assert!(
                    foreign(&device).contains("neither zeroed nor erased"),
                    "byte at {offset}"
                );
                assert!(!device.classify().may_format());
            }
        }
    }

    #[test]
    fn openwrt_deadc0de_is_blank_whatever_follows() {
        let device = Device::filled(0xFF)
            .with_head(&DEADC0DE)
            .poke(8192, b"old jffs2 junk");
        assert_eq!(
            device.classify(),
            Classification::Blank(BlankKind::DeadC0de)
        );
        // Reversed, it is just data.
        let reversed = Device::filled(0xFF).with_head(&[0xde, 0xc0, 0xad, 0xde]);
        assert!(foreign(&reversed).contains("first MiB"));
    }

    #[test]
    fn upper_capable_filesystems_are_usable() {
        let ext4 = Device::filled(0).with_head(EXT4).classify();
        assert!(
            matches!(ext4, Classification::Usable(ref info) if info.fstype() == Some(FsType::Ext4))
        );
        assert!(!ext4.may_format());
        let f2fs = Device::filled(0).with_head(F2FS).classify();
        assert!(
            matches!(f2fs, Classification::Usable(ref info) if info.label.as_deref() == Some("f2fs-upper"))
        );
    }

    #[test]
    fn signatures_make_a_device_foreign_even_on_zeroes() {
        assert_eq!(
            foreign(&Device::filled(0).with_head(SQUASHFS)),
            "squashfs (read-only)"
        );
        assert_eq!(
            foreign(&Device::filled(0).with_head(b"LUKS\xba\xbe\0\x02")),
            "crypto_LUKS"
        );
        assert_eq!(
            foreign(&Device::filled(0).with_head(GPT)),
            "a partition table"
        );
        let mut md12 = MD_RAID_1X.to_vec();
        md12.splice(0..0, [0u8; 4096]);
        assert_eq!(
            foreign(&Device::filled(0).with_head(&md12)),
            "linux_raid_member"
        );
        // md 0.90 at the end, the rest zeroed.
        let md090 = (SIZE & !0xFFFF) - 0x10000;
        let device = Device::filled(0).poke(md090, &[0xFC, 0x4E, 0x2B, 0xA9, 0, 0, 0, 0]);
        assert_eq!(foreign(&device), "linux_raid_member");
        // vfat, as mkfs.vfat wrote it (the FAT reader also checks the FATs and the root
        // directory, so a bare boot sector is not enough).
        let fat = include_bytes!("../../tests/fixtures/probe/vfat16.img").to_vec();
        assert_eq!(foreign(&Device::filled(0).with_head(&fat)), "vfat");
        // A corrupt superblock is foreign too, with the reason.
        let mut corrupt = EXT4.to_vec();
        corrupt[1024 + 0x78] ^= 1;
        assert_eq!(
            foreign(&Device::filled(0).with_head(&corrupt)),
            "ext4 superblock checksum mismatch"
        );
        // deadc0de does not override a signature.
        let luks_then_deadc0de = Device::filled(0xFF).with_head(b"LUKS\xba\xbe\0\x01");
        assert_eq!(foreign(&luks_then_deadc0de), "crypto_LUKS");
    }

    const MD_RAID_1X: [u8; 8] = [0xFC, 0x4E, 0x2B, 0xA9, 1, 0, 0, 0];

    /// The short read answers only "usable", and only where the whole edges
    /// say the same: a marker, a blank or a foreign device needs the full read.
    #[test]
    fn the_short_read_says_usable_only_where_the_full_read_does() {
        let sector = marker(FsType::Ext4).encode();
        let at_marker = marker_offset(SIZE).unwrap();
        for (head, usable) in [(EXT4, true), (F2FS, true), (SQUASHFS, false), (GPT, false)] {
            let device = Device::filled(0).with_head(head);
            assert_eq!(device.quick().is_some(), usable);
            if let Some(quick) = device.quick() {
                assert_eq!(quick, device.classify());
            }
            // Our marker at the end: an interrupted format, whatever the head holds.
            assert_eq!(device.poke(at_marker, &sector).quick(), None);
        }
        for fill in [0x00, 0xFF] {
            assert_eq!(Device::filled(fill).quick(), None);
        }
    }

    #[test]
    fn our_marker_makes_anything_an_interrupted_format() {
        let offset = marker_offset(SIZE).unwrap();
        assert_eq!(offset, SIZE - 512);
        let sector = marker(FsType::Ext4).encode();
        // Whatever mkfs left before the cut: garbage, or even a complete filesystem.
        for head in [&[0x5Au8; 4096][..], EXT4, F2FS, &[0u8; 16][..]] {
            let device = Device::filled(0).with_head(head).poke(offset, &sector);
            assert_eq!(
                device.classify(),
                Classification::Interrupted(marker(FsType::Ext4))
            );
            assert!(device.classify().may_format());
        }
    }

    #[test]
    fn a_damaged_or_misplaced_marker_is_not_ours() {
        let offset = marker_offset(SIZE).unwrap();
        let mut sector = marker(FsType::F2fs).encode();
        assert_eq!(FormatMarker::decode(&sector), Some(marker(FsType::F2fs)));
        sector[100] ^= 1;
        assert_eq!(FormatMarker::decode(&sector), None);
        let device = Device::filled(0).poke(offset, &sector);
        assert!(foreign(&device).contains("last MiB"));
        // A marker written for another device size (an image copied to a bigger disk).
        let other_size = FormatMarker {
            device_size: SIZE / 2,
            ..marker(FsType::Ext4)
        };
        let device = Device::filled(0).poke(offset, &other_size.encode());
        assert!(foreign(&device).contains("last MiB"));
        // One sector too early.
        let device = Device::filled(0).poke(offset - 512, &marker(FsType::Ext4).encode());
        assert!(foreign(&device).contains("last MiB"));
        assert_eq!(FormatMarker::decode(&[0u8; 100]), None);
    }

    #[test]
    fn small_devices_overlap_their_edges() {
        let size = 700 * 1024;
        assert_eq!(edge_ranges(size), (700 * 1024, 0, 700 * 1024));
        assert_eq!(
            edge_ranges(SIZE),
            (EDGE_BYTES, SIZE - EDGE_BYTES as u64, EDGE_BYTES)
        );
        let bytes = vec![0u8; size as usize];
        let edges = Edges {
            head: &bytes,
            tail: &bytes,
            size,
            sector_size: 512,
        };
        assert_eq!(classify(edges), Classification::Blank(BlankKind::Zeroed));
        let empty = Edges {
            head: &[],
            tail: &[],
            size: 0,
            sector_size: 512,
        };
        assert!(matches!(classify(empty), Classification::Foreign(_)));
        assert_eq!(marker_offset(0), None);
    }

    #[test]
    fn the_filesystem_leaves_the_reserved_tail_alone() {
        for size in [SIZE, SIZE + 3 * 512, 8 << 20] {
            let fs = fs_size_for(size).unwrap();
            assert_eq!(fs % 4096, 0);
            assert!(fs + RESERVED_TAIL <= size);
            assert!(size - fs < RESERVED_TAIL + 4096);
            assert!(marker_offset(size).unwrap() >= fs + RESERVED_TAIL - 512);
        }
        assert_eq!(fs_size_for(RESERVED_TAIL), None);
    }
}
