//! Partition-table reader: GPT (primary header) and MBR primary partitions.
//!
//! Enough to resolve `PARTUUID=` and `PARTLABEL=` and to know where each
//! partition starts; the kernel does the real partition scan. Only the primary
//! GPT is read (it is what the first bytes of the disk hold); a damaged primary
//! GPT is an error, not a reason to guess from the protective MBR. MBR logical
//! partitions (inside an extended partition) are not followed.

use super::bytes::{guid, le32, le64, slice, utf16le_name};
use super::crc::crc32;
use super::superblock::looks_like_fat_boot_sector;
pub use super::ProbeError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// 1-based as the kernel names it
    pub number: u32,
    /// lower-case; GPT GUID or MBR "ssssssss-pp"
    pub partuuid: String,
    /// GPT name (UTF-16LE decoded)
    pub name: Option<String>,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// Bytes from the start of a disk `parse_table` needs (GPT header + 128 entries at 512-byte sectors).
pub const TABLE_BYTES: usize = 34 * 512;

/// Bytes `parse_table` needs for a disk with `sector_size`-byte sectors and the
/// usual GPT layout (header in LBA 1, 128 entries of 128 bytes from LBA 2).
/// Equals [`TABLE_BYTES`] for 512-byte sectors.
pub fn table_bytes(sector_size: u32) -> usize {
    2 * sector_size as usize + GPT_USUAL_ENTRY_BYTES
}

const GPT_USUAL_ENTRY_BYTES: usize = 128 * 128;
const MBR_LEN: usize = 512;
const MBR_DISK_SIGNATURE: usize = 440;
const MBR_ENTRIES: usize = 446;
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_MIN_HEADER_LEN: usize = 92;
const GPT_HEADER_CRC: usize = 16;
/// Guards against headers that claim gigabytes of entries.
const GPT_MAX_ENTRY_BYTES: u64 = 1 << 20;

/// GPT if there is a valid GPT header (check header CRC32 and entries CRC32; protective MBR), else MBR primary partitions, else Ok(None).
pub fn parse_table(buf: &[u8], sector_size: u32) -> Result<Option<Vec<PartEntry>>, ProbeError> {
    if !(512..=65536).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(ProbeError::new(format!(
            "sector size {sector_size} invalid"
        )));
    }
    let Some(mbr) = slice(buf, 0, MBR_LEN) else {
        return Ok(None);
    };
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let entries: Vec<&[u8]> = mbr[MBR_ENTRIES..510].chunks_exact(16).collect();
    // Boot indicators other than 0x00/0x80 mean this sector is boot code or a
    // filesystem's boot sector, not a partition table.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    if entries.iter().any(|e| e[4] == MBR_TYPE_GPT_PROTECTIVE) {
        return gpt(buf, sector_size as usize).map(Some);
    }
    if looks_like_fat_boot_sector(buf) {
        return Ok(None);
    }
    Ok(Some(mbr_primaries(mbr)))
}

fn mbr_primaries(mbr: &[u8]) -> Vec<PartEntry> {
    let disk_signature = le32(mbr, MBR_DISK_SIGNATURE).unwrap_or(0);
    mbr[MBR_ENTRIES..510]
        .chunks_exact(16)
        .zip(1u32..)
        .filter_map(|(entry, number)| {
            let part_type = entry[4];
            let start = u64::from(le32(entry, 8)?);
            let sectors = u64::from(le32(entry, 12)?);
            if part_type == 0 || sectors == 0 {
                return None;
            }
            Some(PartEntry {
                number,
                partuuid: format!("{disk_signature:08x}-{number:02x}"),
                name: None,
                first_lba: start,
                last_lba: start + sectors - 1,
            })
        })
        .collect()
}

fn gpt(buf: &[u8], sector_size: usize) -> Result<Vec<PartEntry>, ProbeError> {
    let truncated = |what: &str, need: u64| {
        ProbeError::new(format!(
            "GPT {what} truncated (need {need} bytes, have {})",
            buf.len()
        ))
    };
    let header_start = sector_size;
    let fixed = slice(buf, header_start, GPT_MIN_HEADER_LEN)
        .ok_or_else(|| truncated("header", (header_start + GPT_MIN_HEADER_LEN) as u64))?;
    if fixed[..8] != *GPT_SIGNATURE {
        return Err(ProbeError::new("protective MBR but no GPT header in LBA 1"));
    }
    let field32 = |off| le32(fixed, off).unwrap_or(0);
    let field64 = |off| le64(fixed, off).unwrap_or(0);

    let header_len = field32(12) as usize;
    if !(GPT_MIN_HEADER_LEN..=sector_size).contains(&header_len) {
        return Err(ProbeError::new(format!(
            "GPT header size {header_len} invalid"
        )));
    }
    let header = slice(buf, header_start, header_len)
        .ok_or_else(|| truncated("header", (header_start + header_len) as u64))?;
    let mut zeroed = header.to_vec();
    zeroed[GPT_HEADER_CRC..GPT_HEADER_CRC + 4].fill(0);
    if crc32(&zeroed) != field32(GPT_HEADER_CRC) {
        return Err(ProbeError::new("GPT header checksum mismatch"));
    }
    if field64(24) != 1 {
        return Err(ProbeError::new(format!(
            "GPT header in LBA 1 says it is at LBA {}",
            field64(24)
        )));
    }

    let entries_lba = field64(72);
    let entry_count = u64::from(field32(80));
    let entry_len = field32(84) as usize;
    if entry_len < 128 || !entry_len.is_power_of_two() {
        return Err(ProbeError::new(format!(
            "GPT partition entry size {entry_len} invalid"
        )));
    }
    let entries_len = entry_count * entry_len as u64;
    if entries_len > GPT_MAX_ENTRY_BYTES {
        return Err(ProbeError::new(format!(
            "GPT claims {entry_count} partition entries of {entry_len} bytes, too many"
        )));
    }
    if entries_lba < 2 {
        return Err(ProbeError::new(format!(
            "GPT partition entries at LBA {entries_lba} overlap the header"
        )));
    }
    let entries_start = entries_lba
        .checked_mul(sector_size as u64)
        .filter(|&start| start <= usize::MAX as u64 - GPT_MAX_ENTRY_BYTES)
        .ok_or_else(|| {
            ProbeError::new(format!("GPT partition entries LBA {entries_lba} invalid"))
        })?;
    let entries = slice(buf, entries_start as usize, entries_len as usize)
        .ok_or_else(|| truncated("partition entries", entries_start + entries_len))?;
    if crc32(entries) != field32(88) {
        return Err(ProbeError::new("GPT partition entries checksum mismatch"));
    }

    Ok(entries
        .chunks_exact(entry_len)
        .zip(1u32..)
        .filter_map(|(entry, number)| {
            let type_guid: [u8; 16] = entry[0..16].try_into().ok()?;
            if type_guid == [0; 16] {
                return None;
            }
            let first_lba = le64(entry, 32)?;
            let last_lba = le64(entry, 40)?;
            // The kernel gives such an entry no usable device either.
            if first_lba > last_lba {
                return None;
            }
            Some(PartEntry {
                number,
                partuuid: guid(entry[16..32].try_into().ok()?),
                name: utf16le_name(&entry[56..128]),
                first_lba,
                last_lba,
            })
        })
        .collect())
}
