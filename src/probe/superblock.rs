//! Filesystem identification from the first bytes of a device.
//!
//! Readers for the filesystems overlay-init mounts (squashfs, erofs, ext2/3/4)
//! check the superblock well enough that a corrupt one is reported as an error
//! rather than guessed at; a few other filesystems are only recognised by their
//! magic so that a wrong `root=` gets a clear message.

use super::bytes::{
    array, be16, be32, le16, le32, le64, nul_padded_label, raw_uuid, slice, u8_at, utf16le_name,
};
use super::crc::{crc32_raw, crc32c_raw};
use super::source::{ByteSource, SliceSource};
pub use super::ProbeError;
use crate::fstype::FsType;
use std::fmt;

/// Bytes from the start of a device that `detect` needs at most.
/// (The btrfs magic sits at 64 KiB + 64; the swap signature of 64 KiB pages ends at 64 KiB.)
pub const PROBE_BYTES: usize = 68 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    Supported(FsType),
    /// recognised but not mountable as a lower or upper, e.g. "vfat", "exfat",
    /// "iso9660", "btrfs", "xfs", "swap", "jffs2", and containers: "crypto_LUKS",
    /// "linux_raid_member"
    Other(&'static str),
}

impl FsKind {
    /// The filesystem's name as blkid's TYPE and the kernel's mount(2) spell it.
    pub fn name(&self) -> &'static str {
        match self {
            FsKind::Supported(t) => t.kernel_name(),
            FsKind::Other(name) => name,
        }
    }
}

/// Messages print the name (`iso9660`), never the Rust variant.
impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub kind: FsKind,
    /// as blkid prints LABEL (trailing blanks trimmed)
    pub label: Option<String>,
    /// as blkid prints UUID: dashed lower-case hex for ext4/erofs, `XXXX-XXXX`
    /// for vfat/exfat, `YYYY-MM-DD-HH-MM-SS-CC` for iso9660
    pub uuid: Option<String>,
}

impl FsInfo {
    pub fn fstype(&self) -> Option<FsType> {
        match self.kind {
            FsKind::Supported(t) => Some(t),
            FsKind::Other(_) => None,
        }
    }

    fn other(name: &'static str) -> Self {
        FsInfo {
            kind: FsKind::Other(name),
            label: None,
            uuid: None,
        }
    }
}

type ProbeResult = Result<Option<FsInfo>, ProbeError>;

/// A reader: most need only the first bytes of the device; the FAT, exFAT and
/// ISO 9660 ones read on (root directory, volume descriptor set).
#[derive(Clone, Copy)]
enum Probe {
    Head(fn(&[u8]) -> ProbeResult),
    Source(fn(&[u8], &mut dyn ByteSource) -> ProbeResult),
}

/// Readers in the order they are tried: the ones we mount first.
/// Containers (LUKS, RAID) come before filesystems: their header hides whatever
/// stale superblock may lie inside.
const PROBES: &[Probe] = &[
    Probe::Head(luks),
    Probe::Head(md_raid_head),
    Probe::Head(squashfs),
    Probe::Head(erofs),
    Probe::Head(ext),
    Probe::Head(f2fs),
    Probe::Source(super::fat::probe_vfat),
    Probe::Source(super::fat::probe_exfat),
    Probe::Head(xfs),
    Probe::Head(btrfs),
    Probe::Source(super::iso9660::probe),
    Probe::Head(jffs2),
    Probe::Head(swap),
];

/// Identify the filesystem from the first bytes of a device (may be shorter than
/// PROBE_BYTES; a truncated/corrupt superblock gives Err with a reason, no magic at
/// all gives Ok(None)). Readers that look past `buf` (a FAT32 root directory
/// after its FATs) see only `buf`: use [`detect_with`] on a device.
///
/// A corrupt superblock does not hide a valid one of another kind found later;
/// only when nothing valid is found is the first error returned.
pub fn detect(buf: &[u8]) -> ProbeResult {
    detect_with(buf, &mut SliceSource(buf))
}

/// [`detect`], with `device` for the reads past `head` (its first
/// [`PROBE_BYTES`], or fewer when the device is shorter).
pub fn detect_with(head: &[u8], device: &mut dyn ByteSource) -> ProbeResult {
    let mut first_error = None;
    for probe in PROBES {
        let found = match probe {
            Probe::Head(probe) => probe(head),
            Probe::Source(probe) => probe(head, device),
        };
        match found {
            Ok(Some(info)) => return Ok(Some(info)),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

fn truncated(what: &str) -> ProbeError {
    ProbeError::new(format!("{what} superblock truncated"))
}

// ---- squashfs -------------------------------------------------------------

const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";
const SQUASHFS_SUPERBLOCK_LEN: usize = 96;

fn squashfs(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    if slice(buf, 0, 4) != Some(SQUASHFS_MAGIC) {
        return Ok(None);
    }
    let sb = slice(buf, 0, SQUASHFS_SUPERBLOCK_LEN).ok_or_else(|| truncated("squashfs"))?;
    let field16 = |off| le16(sb, off).unwrap_or(0);
    let field32 = |off| le32(sb, off).unwrap_or(0);
    let field64 = |off| le64(sb, off).unwrap_or(0);

    let (major, minor) = (field16(28), field16(30));
    if (major, minor) != (4, 0) {
        return Err(ProbeError::new(format!(
            "squashfs version {major}.{minor} not supported (need 4.0)"
        )));
    }
    let block_size = field32(12);
    let block_log = field16(22);
    if !(4096..=1 << 20).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(ProbeError::new(format!(
            "squashfs block size {block_size} invalid"
        )));
    }
    if u32::from(block_log) != block_size.trailing_zeros() {
        return Err(ProbeError::new(format!(
            "squashfs block_log {block_log} does not match block size {block_size}"
        )));
    }
    let compression = field16(20);
    if !(1..=6).contains(&compression) {
        return Err(ProbeError::new(format!(
            "squashfs compression id {compression} unknown"
        )));
    }
    let bytes_used = field64(40);
    if bytes_used < SQUASHFS_SUPERBLOCK_LEN as u64 {
        return Err(ProbeError::new(format!(
            "squashfs bytes_used {bytes_used} smaller than its superblock"
        )));
    }
    let (id_table, inode_table, directory_table) = (field64(48), field64(64), field64(72));
    if inode_table > directory_table
        || directory_table >= bytes_used
        || id_table >= bytes_used
        || inode_table < SQUASHFS_SUPERBLOCK_LEN as u64
    {
        return Err(ProbeError::new(
            "squashfs table offsets lie outside the image (bytes_used)",
        ));
    }
    Ok(Some(FsInfo {
        kind: FsKind::Supported(FsType::Squashfs),
        label: None,
        uuid: None,
    }))
}

// ---- erofs ----------------------------------------------------------------

const EROFS_SUPER_OFFSET: usize = 1024;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EROFS_SUPERBLOCK_LEN: usize = 128;
const EROFS_FEATURE_COMPAT_SB_CHKSUM: u32 = 0x1;

fn erofs(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    if le32(buf, EROFS_SUPER_OFFSET) != Some(EROFS_MAGIC) {
        return Ok(None);
    }
    let sb =
        slice(buf, EROFS_SUPER_OFFSET, EROFS_SUPERBLOCK_LEN).ok_or_else(|| truncated("erofs"))?;
    let blkszbits = u8_at(sb, 12).unwrap_or(0);
    if !(9..=16).contains(&blkszbits) {
        return Err(ProbeError::new(format!(
            "erofs block size 2^{blkszbits} invalid"
        )));
    }
    let feature_compat = le32(sb, 8).unwrap_or(0);
    if feature_compat & EROFS_FEATURE_COMPAT_SB_CHKSUM != 0 {
        // As the kernel does: crc32c over the rest of the first block (or one
        // block when blocks are smaller than the superblock offset), seeded with
        // ~0, no final inversion, with the checksum field taken as zero.
        let block_size = 1usize << blkszbits;
        let len = if block_size > EROFS_SUPER_OFFSET {
            block_size - EROFS_SUPER_OFFSET
        } else {
            block_size
        };
        let covered = slice(buf, EROFS_SUPER_OFFSET, len).ok_or_else(|| truncated("erofs"))?;
        let expected = le32(covered, 4).unwrap_or(0);
        let crc = crc32c_raw(
            crc32c_raw(crc32c_raw(!0, &covered[..4]), &[0; 4]),
            &covered[8..],
        );
        if crc != expected {
            return Err(ProbeError::new("erofs superblock checksum mismatch"));
        }
    }
    Ok(Some(FsInfo {
        kind: FsKind::Supported(FsType::Erofs),
        label: nul_padded_label(&sb[64..80]),
        uuid: array(sb, 48).and_then(raw_uuid),
    }))
}

// ---- ext2/3/4 -------------------------------------------------------------

const EXT_SUPER_OFFSET: usize = 1024;
const EXT_SUPERBLOCK_LEN: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const EXT_RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const EXT_CHECKSUM_TYPE_CRC32C: u8 = 1;
const EXT_CHECKSUM_OFFSET: usize = 0x3FC;

fn ext(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    if le16(buf, EXT_SUPER_OFFSET + 0x38) != Some(EXT_MAGIC) {
        return Ok(None);
    }
    let sb = slice(buf, EXT_SUPER_OFFSET, EXT_SUPERBLOCK_LEN).ok_or_else(|| truncated("ext4"))?;
    let field32 = |off| le32(sb, off).unwrap_or(0);

    let log_block_size = field32(0x18);
    if log_block_size > 6 {
        return Err(ProbeError::new(format!(
            "ext4 block size 1024<<{log_block_size} invalid"
        )));
    }
    if field32(0x20) == 0 || field32(0x28) == 0 {
        return Err(ProbeError::new(
            "ext4 superblock has zero blocks or inodes per group",
        ));
    }
    let rev_level = field32(0x4C);
    if rev_level > 1 {
        return Err(ProbeError::new(format!(
            "ext4 revision {rev_level} unknown"
        )));
    }
    if field32(0x64) & EXT_RO_COMPAT_METADATA_CSUM != 0 {
        let checksum_type = u8_at(sb, 0x175).unwrap_or(0);
        if checksum_type != EXT_CHECKSUM_TYPE_CRC32C {
            return Err(ProbeError::new(format!(
                "ext4 checksum type {checksum_type} unknown"
            )));
        }
        let crc = crc32c_raw(!0, &sb[..EXT_CHECKSUM_OFFSET]);
        if crc != field32(EXT_CHECKSUM_OFFSET) {
            return Err(ProbeError::new("ext4 superblock checksum mismatch"));
        }
    }
    if field32(0x60) & EXT_INCOMPAT_JOURNAL_DEV != 0 {
        return Ok(Some(FsInfo::other("jbd")));
    }
    Ok(Some(FsInfo {
        kind: FsKind::Supported(FsType::Ext4),
        label: nul_padded_label(&sb[0x78..0x88]),
        uuid: array(sb, 0x68).and_then(raw_uuid),
    }))
}

// ---- recognised only ------------------------------------------------------

/// A FAT boot sector: the 0x55AA signature, a sane BIOS parameter block and a
/// "FAT" type string. Shared with the MBR reader, which must not take a FAT
/// boot sector for a partition table.
pub(crate) fn looks_like_fat_boot_sector(buf: &[u8]) -> bool {
    let Some(sector) = slice(buf, 0, 512) else {
        return false;
    };
    let bytes_per_sector = le16(sector, 11).unwrap_or(0);
    let sectors_per_cluster = sector[13];
    let reserved_sectors = le16(sector, 14).unwrap_or(0);
    let fats = sector[16];
    let media = sector[21];
    sector[510..512] == [0x55, 0xAA]
        && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved_sectors != 0
        && fats != 0
        && (media >= 0xF8 || media == 0xF0)
        && (sector[54..57] == *b"FAT" || sector[82..87] == *b"FAT32")
}

fn xfs(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    if slice(buf, 0, 4) != Some(b"XFSB") {
        return Ok(None);
    }
    let block_size = be32(buf, 4).ok_or_else(|| truncated("xfs"))?;
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(ProbeError::new(format!(
            "xfs block size {block_size} invalid"
        )));
    }
    Ok(Some(FsInfo::other("xfs")))
}

fn btrfs(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    Ok((slice(buf, 0x10040, 8) == Some(b"_BHRfS_M")).then(|| FsInfo::other("btrfs")))
}

// ---- f2fs -----------------------------------------------------------------

const F2FS_SUPER_OFFSET: usize = 1024;
const F2FS_MAGIC: u32 = 0xF2F5_2010;
/// Up to the end of the volume name (124 + 512 UTF-16 units).
const F2FS_SUPERBLOCK_LEN: usize = 124 + 1024;

/// f2fs: magic, then the geometry the kernel insists on (4 KiB blocks, sectors
/// of 512 B to 4 KiB that add up to a block); label (UTF-16LE) and UUID as blkid.
fn f2fs(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    if le32(buf, F2FS_SUPER_OFFSET) != Some(F2FS_MAGIC) {
        return Ok(None);
    }
    let sb = slice(buf, F2FS_SUPER_OFFSET, F2FS_SUPERBLOCK_LEN).ok_or_else(|| truncated("f2fs"))?;
    let field32 = |off| le32(sb, off).unwrap_or(0);
    let (log_sectorsize, log_sectors_per_block, log_blocksize) =
        (field32(8), field32(12), field32(16));
    if log_blocksize != 12 {
        return Err(ProbeError::new(format!(
            "f2fs block size 2^{log_blocksize} invalid (need 4096)"
        )));
    }
    if !(9..=12).contains(&log_sectorsize) || log_sectorsize + log_sectors_per_block != 12 {
        return Err(ProbeError::new(format!(
            "f2fs sector size 2^{log_sectorsize} x 2^{log_sectors_per_block} does not make a 4096-byte block"
        )));
    }
    Ok(Some(FsInfo {
        kind: FsKind::Supported(FsType::F2fs),
        label: utf16le_name(&sb[124..]),
        uuid: array(sb, 108).and_then(raw_uuid),
    }))
}

// ---- containers: LUKS, Linux RAID -----------------------------------------

/// LUKS1 and LUKS2 both start with this (LUKS2 keeps a second copy further on).
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

/// A LUKS header: the device holds encrypted data, never ours to format.
fn luks(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    if slice(buf, 0, 6) != Some(LUKS_MAGIC) {
        return Ok(None);
    }
    // The UUID is stored as text (40 bytes at 168, in both versions).
    let uuid = slice(buf, 168, 40).and_then(nul_padded_label);
    Ok(Some(FsInfo {
        kind: FsKind::Other("crypto_LUKS"),
        label: None,
        uuid,
    }))
}

/// Magic of every Linux md RAID superblock (0.90 in host order, 1.x little-endian).
pub(crate) const MD_MAGIC: u32 = 0xA92B_4EFC;

/// md RAID 1.1 (superblock at 0) and 1.2 (at 4 KiB): `major_version` is 1.
/// Versions 0.90 and 1.0 live at the end of the device: see [`detect_tail`].
fn md_raid_head(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    for offset in [0, 4096] {
        if le32(buf, offset) == Some(MD_MAGIC) && le32(buf, offset + 4) == Some(1) {
            return Ok(Some(FsInfo::other("linux_raid_member")));
        }
    }
    Ok(None)
}

/// Signatures kept at the end of a device: md RAID 0.90 (64 KiB-aligned, the last
/// 64 KiB) and 1.0 (8 KiB from the end, 4 KiB-aligned). `tail` is the device's last
/// bytes (at least 128 KiB to see 0.90), `device_size` its size in bytes.
pub fn detect_tail(tail: &[u8], device_size: u64) -> Option<&'static str> {
    let tail_start = device_size.checked_sub(tail.len() as u64)?;
    let at = |absolute: u64| -> Option<usize> {
        usize::try_from(absolute.checked_sub(tail_start)?).ok()
    };
    let md090 = (device_size & !0xFFFF).checked_sub(0x10000);
    let md10 = device_size.checked_sub(8192).map(|o| o & !0xFFF);
    for (offset, versions) in [(md090, [0u32, 0]), (md10, [1, 1])] {
        let Some(offset) = offset.and_then(at) else {
            continue;
        };
        let magic_le = le32(tail, offset);
        let magic_be = be32(tail, offset);
        if magic_le == Some(MD_MAGIC) && le32(tail, offset + 4) == Some(versions[0]) {
            return Some("linux_raid_member");
        }
        // 0.90 superblocks are written in the host's byte order.
        if versions[0] == 0 && magic_be == Some(MD_MAGIC) && be32(tail, offset + 4) == Some(0) {
            return Some("linux_raid_member");
        }
    }
    None
}

/// JFFS2 has only a 16-bit magic, so the first node header's CRC must match too.
fn jffs2(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    const MAGIC: u16 = 0x1985;
    const NODE_TYPES: [u16; 6] = [0xE001, 0xE002, 0x2003, 0x2004, 0x6006, 0xE008];
    for big_endian in [false, true] {
        let read16 = if big_endian { be16 } else { le16 };
        let read32 = if big_endian { be32 } else { le32 };
        if read16(buf, 0) != Some(MAGIC) {
            continue;
        }
        let (Some(node_type), Some(header), Some(header_crc)) =
            (read16(buf, 2), slice(buf, 0, 8), read32(buf, 8))
        else {
            return Ok(None);
        };
        // jffs2 uses the kernel's crc32(0, ...): seed 0, no inversion.
        if NODE_TYPES.contains(&node_type) && crc32_raw(0, header) == header_crc {
            return Ok(Some(FsInfo::other("jffs2")));
        }
    }
    Ok(None)
}

fn swap(buf: &[u8]) -> Result<Option<FsInfo>, ProbeError> {
    for page_size in [4096usize, 8192, 16384, 32768, 65536] {
        let signature = slice(buf, page_size - 10, 10);
        if signature == Some(b"SWAPSPACE2") || signature == Some(b"SWAP-SPACE") {
            return Ok(Some(FsInfo::other("swap")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUASHFS: &[u8] = include_bytes!("../../tests/fixtures/probe/squashfs.img");
    const EROFS: &[u8] = include_bytes!("../../tests/fixtures/probe/erofs.img");
    const EROFS_LABEL: &[u8] = include_bytes!("../../tests/fixtures/probe/erofs-label.img");
    const EXT4: &[u8] = include_bytes!("../../tests/fixtures/probe/ext4.img");
    const EXT2: &[u8] = include_bytes!("../../tests/fixtures/probe/ext2.img");
    const SWAP: &[u8] = include_bytes!("../../tests/fixtures/probe/swap.img");
    /// `mkfs.f2fs -l f2fs-upper -U 5b1c3d2e-...` (f2fs-tools 1.15), first 4 KiB.
    const F2FS: &[u8] = include_bytes!("../../tests/fixtures/probe/f2fs.img");
    const ALL: &[&[u8]] = &[SQUASHFS, EROFS, EROFS_LABEL, EXT4, EXT2, SWAP, F2FS];

    fn info(kind: FsKind, label: Option<&str>, uuid: Option<&str>) -> FsInfo {
        FsInfo {
            kind,
            label: label.map(String::from),
            uuid: uuid.map(String::from),
        }
    }

    fn detected(buf: &[u8]) -> FsInfo {
        detect(buf).expect("valid").expect("recognised")
    }

    fn error(buf: &[u8]) -> String {
        detect(buf).expect_err("must be rejected").to_string()
    }

    fn patched(buf: &[u8], offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut out = buf.to_vec();
        out[offset..offset + bytes.len()].copy_from_slice(bytes);
        out
    }

    // Expected values are what `blkid -p` prints for the same images.
    #[test]
    fn squashfs_from_mksquashfs() {
        let found = detected(SQUASHFS);
        assert_eq!(found, info(FsKind::Supported(FsType::Squashfs), None, None));
        assert_eq!(found.fstype(), Some(FsType::Squashfs));
    }

    #[test]
    fn erofs_from_mkfs_erofs_with_uuid() {
        assert_eq!(
            detected(EROFS),
            info(
                FsKind::Supported(FsType::Erofs),
                None,
                Some("0f3c2a51-7d2e-4b8a-9c11-2f6e8d4a7b90")
            )
        );
    }

    #[test]
    fn erofs_volume_name_is_the_label() {
        assert_eq!(
            detected(EROFS_LABEL),
            info(
                FsKind::Supported(FsType::Erofs),
                Some("erofs-root"),
                Some("0f3c2a51-7d2e-4b8a-9c11-2f6e8d4a7b90")
            )
        );
    }

    #[test]
    fn ext4_from_mkfs_ext4_with_label_and_uuid() {
        assert_eq!(
            detected(EXT4),
            info(
                FsKind::Supported(FsType::Ext4),
                Some("rootfs"),
                Some("3e6b1c2d-5a4f-4e8b-9d7c-1a2b3c4d5e6f")
            )
        );
    }

    #[test]
    fn ext2_is_mounted_by_the_ext4_driver() {
        assert_eq!(
            detected(EXT2),
            info(
                FsKind::Supported(FsType::Ext4),
                Some("legacy"),
                Some("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
            )
        );
    }

    #[test]
    fn swap_from_mkswap_is_other() {
        let found = detected(SWAP);
        assert_eq!(found, FsInfo::other("swap"));
        assert_eq!(found.fstype(), None);
    }

    #[test]
    fn no_magic_is_none() {
        assert_eq!(detect(&[]), Ok(None));
        assert_eq!(detect(&[0; PROBE_BYTES]), Ok(None));
        assert_eq!(detect(&[0xff; PROBE_BYTES]), Ok(None));
        assert_eq!(detect(b"hsq"), Ok(None));
    }

    #[test]
    fn recognises_other_filesystems_by_magic() {
        let zeros = vec![0u8; PROBE_BYTES];

        // vfat, exfat and iso9660 are read in full: see live_tests.rs.

        let xfs = patched(&zeros, 0, b"XFSB\0\0\x10\0");
        assert_eq!(detected(&xfs), FsInfo::other("xfs"));
        assert!(error(&patched(&xfs, 4, &[0, 0, 0, 3])).contains("xfs block size"));

        let btrfs = patched(&zeros, 0x10040, b"_BHRfS_M");
        assert_eq!(detected(&btrfs), FsInfo::other("btrfs"));
        // The btrfs magic lies past a short read: not visible, not an error.
        assert_eq!(detect(&btrfs[..0x10040 + 7]), Ok(None));

        let f2fs = patched(&zeros, 1024, &0xF2F5_2010u32.to_le_bytes());
        assert!(error(&f2fs).contains("f2fs block size"));

        let iso = patched(&zeros, 32768, b"\x01CD001\x01");
        assert_eq!(detected(&iso), FsInfo::other("iso9660"));

        let swap64k = patched(&zeros, 65536 - 10, b"SWAPSPACE2");
        assert_eq!(detected(&swap64k), FsInfo::other("swap"));
    }

    #[test]
    fn f2fs_from_mkfs_f2fs_with_label_and_uuid() {
        let found = detected(F2FS);
        assert_eq!(
            found,
            info(
                FsKind::Supported(FsType::F2fs),
                Some("f2fs-upper"),
                Some("5b1c3d2e-8f4a-4c6b-9d0e-1a2b3c4d5e6f")
            )
        );
        assert!(found.fstype().unwrap().can_be_upper());
        assert!(error(&patched(F2FS, 1024 + 16, &[13])).contains("block size 2^13"));
        assert!(error(&patched(F2FS, 1024 + 8, &[10])).contains("sector size"));
        assert_eq!(error(&F2FS[..2000]), "f2fs superblock truncated");
    }

    #[test]
    fn luks_headers_are_containers_with_their_uuid() {
        for version in [1u8, 2] {
            let mut header = vec![0u8; 4096];
            header[..6].copy_from_slice(b"LUKS\xba\xbe");
            header[7] = version;
            header[168..204].copy_from_slice(b"6f1a0c55-2a3b-4c4d-8e5f-60718293a4b5");
            let found = detected(&header);
            assert_eq!(found.kind, FsKind::Other("crypto_LUKS"));
            assert_eq!(
                found.uuid.as_deref(),
                Some("6f1a0c55-2a3b-4c4d-8e5f-60718293a4b5")
            );
        }
        // The LUKS header wins over a stale ext4 superblock left inside it.
        let mut luks_over_ext4 = EXT4.to_vec();
        luks_over_ext4[..6].copy_from_slice(b"LUKS\xba\xbe");
        assert_eq!(detected(&luks_over_ext4).kind, FsKind::Other("crypto_LUKS"));
    }

    #[test]
    fn md_raid_superblocks_at_the_start_and_at_the_end() {
        let zeros = vec![0u8; PROBE_BYTES];
        for offset in [0usize, 4096] {
            let mut md = patched(&zeros, offset, &MD_MAGIC.to_le_bytes());
            md[offset + 4] = 1;
            assert_eq!(detected(&md), FsInfo::other("linux_raid_member"));
            // The magic without major_version 1 is not a 1.x superblock.
            md[offset + 4] = 7;
            assert_eq!(detect(&md), Ok(None));
        }
        // 0.90 and 1.0 live at the end: seen in the tail of a 10 MiB + 3 KiB device.
        let size: u64 = 10 * 1024 * 1024 + 3072;
        let tail_len = 1024 * 1024;
        let tail_start = size - tail_len as u64;
        let md090 = ((size & !0xFFFF) - 0x10000 - tail_start) as usize;
        let md10 = (((size - 8192) & !0xFFF) - tail_start) as usize;
        let blank = vec![0u8; tail_len];
        assert_eq!(detect_tail(&blank, size), None);
        for (le, offset, version) in [(true, md090, 0u32), (false, md090, 0), (true, md10, 1)] {
            let mut tail = blank.clone();
            let (magic, v) = if le {
                (MD_MAGIC.to_le_bytes(), version.to_le_bytes())
            } else {
                (MD_MAGIC.to_be_bytes(), version.to_be_bytes())
            };
            tail[offset..offset + 4].copy_from_slice(&magic);
            tail[offset + 4..offset + 8].copy_from_slice(&v);
            assert_eq!(detect_tail(&tail, size), Some("linux_raid_member"));
            // One sector off, it is not where md would look.
            let mut shifted = blank.clone();
            shifted[offset + 512..offset + 516].copy_from_slice(&magic);
            assert_eq!(detect_tail(&shifted, size), None);
        }
        // A tail shorter than the device still works; a tail longer than it is no answer.
        assert_eq!(detect_tail(&blank, 100), None);
    }

    #[test]
    fn jffs2_needs_a_valid_node_header_crc() {
        // A clean marker node: magic, type, length 12, then crc32(0, first 8 bytes).
        for big_endian in [false, true] {
            let mut node = Vec::new();
            let (magic, node_type, len) = if big_endian {
                (
                    0x1985u16.to_be_bytes(),
                    0x2003u16.to_be_bytes(),
                    12u32.to_be_bytes(),
                )
            } else {
                (
                    0x1985u16.to_le_bytes(),
                    0x2003u16.to_le_bytes(),
                    12u32.to_le_bytes(),
                )
            };
            node.extend_from_slice(&magic);
            node.extend_from_slice(&node_type);
            node.extend_from_slice(&len);
            let crc = crc32_raw(0, &node);
            node.extend_from_slice(&if big_endian {
                crc.to_be_bytes()
            } else {
                crc.to_le_bytes()
            });
            node.resize(4096, 0xff);
            assert_eq!(detected(&node), FsInfo::other("jffs2"));
            node[5] ^= 1;
            assert_eq!(detect(&node), Ok(None));
        }
    }

    #[test]
    fn truncated_superblocks_are_errors_with_a_reason() {
        assert_eq!(error(&SQUASHFS[..50]), "squashfs superblock truncated");
        assert_eq!(error(&EROFS[..1100]), "erofs superblock truncated");
        // The checksummed region of erofs runs to the end of its first block.
        assert_eq!(error(&EROFS[..2048]), "erofs superblock truncated");
        assert_eq!(error(&EXT4[..1100]), "ext4 superblock truncated");
        assert_eq!(error(&EXT4[..2047]), "ext4 superblock truncated");
        // A read that ends before the magic cannot tell anything.
        assert_eq!(detect(&EXT4[..1081]), Ok(None));
        // The superblock is all these readers need: a 4 KiB read is enough.
        assert_eq!(detected(&EXT4[..4096]), detected(EXT4));
        assert_eq!(detected(&EXT2[..2048]), detected(EXT2));
    }

    #[test]
    fn every_prefix_is_an_error_none_or_the_full_answer() {
        for fixture in ALL {
            let full = detected(fixture);
            for len in (0..=fixture.len().min(8192)).chain([fixture.len()]) {
                if let Ok(Some(found)) = detect(&fixture[..len]) {
                    assert_eq!(found, full, "prefix of {len} bytes");
                }
            }
        }
    }

    #[test]
    fn corrupt_checksummed_superblocks_are_rejected() {
        assert_eq!(
            error(&patched(EXT4, 1024 + 0x78, b"r00tfs")),
            "ext4 superblock checksum mismatch"
        );
        assert_eq!(
            error(&patched(EROFS_LABEL, 1024 + 64, b"x")),
            "erofs superblock checksum mismatch"
        );
        // erofs covers the whole rest of its first block, not only the 128-byte struct.
        assert_eq!(
            error(&patched(EROFS, 4000, &[1])),
            "erofs superblock checksum mismatch"
        );
    }

    /// Flip every bit of the superblock region: the answer is an error, nothing,
    /// or exactly the original (for bytes outside what the checksum covers).
    #[test]
    fn no_single_bit_flip_gives_a_wrong_answer_when_checksummed() {
        for (fixture, region) in [(EXT4, 0..2048), (EROFS, 0..4096), (EROFS_LABEL, 0..4096)] {
            let full = detected(fixture);
            let mut buf = fixture.to_vec();
            for offset in region {
                for bit in 0..8 {
                    buf[offset] ^= 1 << bit;
                    if let Ok(Some(found)) = detect(&buf) {
                        assert_eq!(found, full, "bit {bit} of byte {offset}");
                        // Only bytes before the superblock, or clearing the very
                        // feature bit that asks for the checksum, go unnoticed.
                        let feature_bit = [1024 + 0x65, 1024 + 8].contains(&offset);
                        assert!(offset < 1024 || feature_bit, "flip at {offset} unnoticed");
                    }
                    buf[offset] ^= 1 << bit;
                }
            }
        }
    }

    /// Without a checksum a flip can change a label, but never the kind.
    #[test]
    fn bit_flips_in_unchecksummed_superblocks_keep_the_kind() {
        for (fixture, region) in [(SQUASHFS, 0..96), (EXT2, 1024..2048)] {
            let kind = detected(fixture).kind;
            let mut buf = fixture.to_vec();
            for offset in region {
                for bit in 0..8 {
                    buf[offset] ^= 1 << bit;
                    if let Ok(Some(found)) = detect(&buf) {
                        // Except the ext feature bit that says "external journal".
                        let journal_dev = offset == 1024 + 0x60 && bit == 3;
                        if !journal_dev {
                            assert_eq!(found.kind, kind, "bit {bit} of byte {offset}");
                        }
                    }
                    buf[offset] ^= 1 << bit;
                }
            }
        }
    }

    #[test]
    fn squashfs_sanity_checks_name_the_field() {
        assert!(error(&patched(SQUASHFS, 28, &[3])).contains("version 3.0"));
        assert!(error(&patched(SQUASHFS, 22, &[16])).contains("block_log"));
        assert!(error(&patched(SQUASHFS, 12, &[0, 0, 0, 0])).contains("block size 0"));
        assert!(error(&patched(SQUASHFS, 20, &[9])).contains("compression"));
        assert!(error(&patched(SQUASHFS, 40, &[0x10, 0, 0])).contains("bytes_used"));
    }

    #[test]
    fn ext4_sanity_checks_apply_without_checksums() {
        assert!(error(&patched(EXT2, 1024 + 0x18, &[9])).contains("block size"));
        assert!(error(&patched(EXT2, 1024 + 0x4C, &[7])).contains("revision 7"));
        let journal_device = patched(EXT2, 1024 + 0x60, &[0x08 | EXT2[1024 + 0x60]]);
        assert_eq!(detected(&journal_device), FsInfo::other("jbd"));
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut rng = crate::test_rng::XorShift::new(0x9E37_79B9_7F4A_7C15);
        for round in 0..3000 {
            let fixture = ALL[round % ALL.len()];
            // Mutations land in the first 4 KiB, the superblock area the readers look at.
            let _ = detect(&rng.mutate(fixture, 4096));
        }
    }
}
