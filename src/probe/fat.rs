//! FAT12/16/32 (`vfat`) and exFAT: USB sticks, SD cards, EFI system partitions.
//!
//! What `blkid` (util-linux 2.38) reports, so that `root=LABEL=`/`UUID=` name the
//! same device here as in `/dev/disk/by-label`:
//! - vfat LABEL: the volume-label entry of the root directory. The boot
//!   sector's copy is *not* the label (blkid shows it as `LABEL_FATBOOT`): a
//!   tool that renames the volume may update only the directory entry.
//! - vfat UUID: the boot sector's serial number as `XXXX-XXXX` (upper-case hex);
//!   on FAT12/16 only when the extended boot signature (0x28/0x29) is there.
//! - exFAT LABEL: the root directory's volume-label entry (UTF-16LE, 11
//!   characters); UUID: the volume serial number as `XXXX-XXXX`.
//!
//! The root directory may lie megabytes into the device (after the FATs), so
//! both readers take a [`ByteSource`]; they read at most
//! [`LABEL_SEARCH_BUDGET`](super::source::LABEL_SEARCH_BUDGET) of directory.

use super::bytes::{array, blkid_label, blkid_utf16_label, le16, le32, slice, u8_at};
use super::source::{Budgeted, ByteSource};
use super::superblock::{FsInfo, FsKind};
use super::ProbeError;

const DIR_ENTRY: usize = 32;
/// Directory bytes read at once.
const CHUNK: usize = 64 * 1024;

// ---- vfat -----------------------------------------------------------------

const FAT12_MAX: u32 = 0xFF4;
const FAT16_MAX: u32 = 0xFFF4;
const FAT32_MAX: u32 = 0x0FFF_FFF6;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_MASK: u8 = 0x3F;
const ENTRY_FREE: u8 = 0xE5;

/// The fields of a FAT boot sector blkid checks, and where the label search starts.
struct FatBoot {
    sector_size: u32,
    cluster_sectors: u32,
    reserved: u32,
    fat_size: u32,
    /// FAT12/16: fat_length in the common BPB; FAT32 has 0 there.
    fat16_length: u16,
    fat32_length: u32,
}

/// The boot sector check blkid makes (`fat_valid_superblock`): `None` when it is
/// not a FAT boot sector.
fn fat_boot(sector: &[u8]) -> Option<FatBoot> {
    let sector = slice(sector, 0, 512)?;
    let string_magic = slice(sector, 0x52, 5) == Some(b"MSWIN")
        || slice(sector, 0x52, 8) == Some(b"FAT32   ")
        || slice(sector, 0x36, 5) == Some(b"MSDOS")
        || [b"FAT16   ", b"FAT12   ", b"FAT     "]
            .iter()
            .any(|m| slice(sector, 0x36, 8) == Some(m.as_slice()));
    if !string_magic {
        // blkid's weak magics (a jump instruction, or the boot signature) need
        // the signature and no JFS/HPFS pseudo-header; other filesystems with a
        // jump instruction (exFAT, NTFS) name themselves at offset 3.
        let jump = matches!(sector[0], 0xEB | 0xE9);
        let named = [b"EXFAT   ", b"NTFS    "]
            .iter()
            .any(|m| slice(sector, 3, 8) == Some(m.as_slice()));
        let pseudo = [b"JFS     ", b"HPFS    "]
            .iter()
            .any(|m| slice(sector, 0x36, 8) == Some(m.as_slice()));
        if !jump || named || pseudo || sector[510..512] != [0x55, 0xAA] {
            return None;
        }
    }
    let fats = u32::from(sector[16]);
    let reserved = u32::from(le16(sector, 14)?);
    let media = sector[21];
    let cluster_sectors = u32::from(sector[13]);
    let sector_size = u32::from(le16(sector, 11)?);
    if fats == 0
        || reserved == 0
        || !(media >= 0xF8 || media == 0xF0)
        || !cluster_sectors.is_power_of_two()
        || !sector_size.is_power_of_two()
        || !(512..=4096).contains(&sector_size)
    {
        return None;
    }
    let dir_entries = u32::from(le16(sector, 17)?);
    let mut sect_count = u32::from(le16(sector, 19)?);
    if sect_count == 0 {
        sect_count = le32(sector, 32)?;
    }
    let fat16_length = le16(sector, 22)?;
    let fat32_length = le32(sector, 36)?;
    let fat_length = if fat16_length != 0 {
        u32::from(fat16_length)
    } else {
        fat32_length
    };
    // As blkid computes it, in 32-bit unsigned arithmetic.
    let fat_size = fat_length.wrapping_mul(fats);
    let dir_size = (dir_entries * DIR_ENTRY as u32).div_ceil(sector_size);
    let clusters = sect_count.wrapping_sub(reserved.wrapping_add(fat_size).wrapping_add(dir_size))
        / cluster_sectors;
    let max = if fat16_length == 0 && fat32_length != 0 {
        FAT32_MAX
    } else if clusters > FAT12_MAX {
        FAT16_MAX
    } else {
        FAT12_MAX
    };
    if clusters > max {
        return None;
    }
    Some(FatBoot {
        sector_size,
        cluster_sectors,
        reserved,
        fat_size,
        fat16_length,
        fat32_length,
    })
}

/// Outcome of scanning one run of directory entries for the label.
enum Scan {
    Label([u8; 11]),
    /// An end-of-directory entry.
    End,
    /// No label in these entries; the directory goes on.
    More,
}

fn fat_scan(entries: &[u8]) -> Scan {
    for entry in entries.chunks_exact(DIR_ENTRY) {
        let first = entry[0];
        if first == 0 {
            return Scan::End;
        }
        let attr = entry[11];
        let cluster_high = le16(entry, 20).unwrap_or(0);
        let cluster_low = le16(entry, 26).unwrap_or(0);
        if first == ENTRY_FREE
            || cluster_high != 0
            || cluster_low != 0
            || attr & ATTR_MASK == ATTR_LONG_NAME
        {
            continue;
        }
        if attr & (ATTR_VOLUME_ID | ATTR_DIR) == ATTR_VOLUME_ID {
            let mut name: [u8; 11] = array(entry, 0).unwrap_or([0; 11]);
            // 0x05 stands for a leading 0xE5 (which marks a free entry).
            if name[0] == 0x05 {
                name[0] = 0xE5;
            }
            return Scan::Label(name);
        }
    }
    Scan::More
}

/// Scan `len` bytes of directory at `offset`, in chunks.
fn fat_scan_run(src: &mut Budgeted<'_>, offset: u64, len: u64) -> Result<Scan, ProbeError> {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(CHUNK as u64) as usize;
        let Some(chunk) = src.read(offset + done, want)? else {
            return Ok(Scan::End);
        };
        match fat_scan(&chunk) {
            Scan::More if chunk.len() == want => done += want as u64,
            // A short read: the device ends inside the directory.
            Scan::More => return Ok(Scan::End),
            found => return Ok(found),
        }
    }
    Ok(Scan::More)
}

pub(crate) fn probe_vfat(
    head: &[u8],
    src: &mut dyn ByteSource,
) -> Result<Option<FsInfo>, ProbeError> {
    let Some(boot) = fat_boot(head) else {
        return Ok(None);
    };
    let mut dir = Budgeted::new(src);
    let sector_size = u64::from(boot.sector_size);
    let (label, serial) = if boot.fat16_length != 0 {
        let root_start = (u64::from(boot.reserved) + u64::from(boot.fat_size)) * sector_size;
        let root_len = u64::from(le16(head, 17).unwrap_or(0)) * DIR_ENTRY as u64;
        let label = match fat_scan_run(&mut dir, root_start, root_len)? {
            Scan::Label(name) => Some(name),
            _ => None,
        };
        let signature = u8_at(head, 38).unwrap_or(0);
        let serial = matches!(signature, 0x28 | 0x29)
            .then(|| array::<4>(head, 39))
            .flatten();
        (label, serial)
    } else if boot.fat32_length != 0 {
        let cluster_bytes = u64::from(boot.cluster_sectors) * sector_size;
        let start_data = boot.reserved.wrapping_add(boot.fat_size);
        let fat_entries = u64::from(boot.fat32_length) * sector_size / 4;
        let mut next = le32(head, 44).unwrap_or(0);
        let mut label = None;
        // blkid follows the root directory's cluster chain for 99 clusters.
        for _ in 1..100 {
            if next == 0 || u64::from(next) >= fat_entries {
                break;
            }
            let sect =
                start_data.wrapping_add(next.wrapping_sub(2).wrapping_mul(boot.cluster_sectors));
            match fat_scan_run(&mut dir, u64::from(sect) * sector_size, cluster_bytes)? {
                Scan::Label(name) => {
                    label = Some(name);
                    break;
                }
                Scan::End => break,
                Scan::More => {}
            }
            let entry_offset = u64::from(boot.reserved) * sector_size + u64::from(next) * 4;
            let Some(entry) = dir.read(entry_offset, 4)? else {
                break;
            };
            let Some(value) = le32(&entry, 0) else {
                break;
            };
            next = value & 0x0FFF_FFFF;
        }
        // The FSInfo sector, when there is one, has its signatures or zeros.
        let fsinfo = u64::from(le16(head, 48).unwrap_or(0));
        if fsinfo != 0 {
            let offset = fsinfo * sector_size;
            let sector = match slice(head, offset as usize, 488) {
                Some(s) => s.to_vec(),
                None => src_read(&mut dir, offset, 488)?,
            };
            let (Some(sig1), Some(sig2)) = (slice(&sector, 0, 4), slice(&sector, 484, 4)) else {
                return Ok(None);
            };
            if ![b"RRaA", b"RRdA", b"\0\0\0\0"]
                .iter()
                .any(|s| s.as_slice() == sig1)
                || ![b"rrAa", b"\0\0\0\0"].iter().any(|s| s.as_slice() == sig2)
            {
                return Ok(None);
            }
        }
        (label, array::<4>(head, 67))
    } else {
        (None, None)
    };
    Ok(Some(FsInfo {
        kind: FsKind::Other("vfat"),
        label: label.and_then(|name| blkid_label(&name)),
        uuid: serial.map(serial_uuid),
    }))
}

fn src_read(src: &mut Budgeted<'_>, offset: u64, len: usize) -> Result<Vec<u8>, ProbeError> {
    Ok(src.read(offset, len)?.unwrap_or_default())
}

/// A 32-bit little-endian volume serial as blkid prints it: `XXXX-XXXX`.
fn serial_uuid(serial: [u8; 4]) -> String {
    format!(
        "{:02X}{:02X}-{:02X}{:02X}",
        serial[3], serial[2], serial[1], serial[0]
    )
}

// ---- exFAT ----------------------------------------------------------------

const EXFAT_ENTRY_EOD: u8 = 0x00;
const EXFAT_ENTRY_LABEL: u8 = 0x83;
const EXFAT_FIRST_DATA_CLUSTER: u32 = 2;
const EXFAT_LAST_DATA_CLUSTER: u32 = 0xFFFF_FFF6;
/// blkid reads no more than 10000 root directory entries.
const EXFAT_MAX_ENTRIES: usize = 10_000;

pub(crate) fn probe_exfat(
    head: &[u8],
    src: &mut dyn ByteSource,
) -> Result<Option<FsInfo>, ProbeError> {
    if slice(head, 3, 8) != Some(b"EXFAT   ") {
        return Ok(None);
    }
    let Some(sb) = slice(head, 0, 512) else {
        return Ok(None);
    };
    // The checks blkid 2.38 makes; the geometry ranges are the specification's,
    // and keep the offsets computed below in range.
    let sector_shift = u32::from(sb[108]);
    let cluster_shift = u32::from(sb[109]);
    if le16(sb, 510) != Some(0xAA55)
        || sb[..3] != [0xEB, 0x76, 0x90]
        || sb[11..64].iter().any(|&b| b != 0)
        || !(9..=12).contains(&sector_shift)
        || cluster_shift > 25 - sector_shift
    {
        return Ok(None);
    }
    let fat_offset = u64::from(le32(sb, 80).unwrap_or(0)) << sector_shift;
    let heap_offset = u64::from(le32(sb, 88).unwrap_or(0));
    let cluster_bytes = 1u64 << (sector_shift + cluster_shift);
    let cluster_offset = |cluster: u32| -> u64 {
        (heap_offset + (u64::from(cluster.wrapping_sub(EXFAT_FIRST_DATA_CLUSTER)) << cluster_shift))
            << sector_shift
    };
    let mut dir = Budgeted::new(src);
    let mut cluster = le32(sb, 96).unwrap_or(0);
    let mut offset = cluster_offset(cluster);
    let mut label = None;
    let mut seen = 0;
    'search: while seen < EXFAT_MAX_ENTRIES {
        // Entries up to the end of this cluster, in chunks.
        let to_cluster_end = cluster_bytes - offset % cluster_bytes;
        let want = to_cluster_end
            .min(CHUNK as u64)
            .min(((EXFAT_MAX_ENTRIES - seen) * DIR_ENTRY) as u64) as usize;
        let Some(chunk) = dir.read(offset, want)? else {
            break;
        };
        for entry in chunk.chunks_exact(DIR_ENTRY) {
            seen += 1;
            match entry[0] {
                EXFAT_ENTRY_EOD => break 'search,
                EXFAT_ENTRY_LABEL => {
                    let chars = usize::from(entry[1]);
                    label = blkid_utf16_label(&entry[2..2 + (chars * 2).min(22)], false);
                    break 'search;
                }
                _ => {}
            }
        }
        if chunk.len() < want {
            break;
        }
        offset = offset.saturating_add(want as u64);
        if offset % cluster_bytes == 0 {
            let entry_offset = fat_offset + u64::from(cluster) * 4;
            let Some(next) = dir.read(entry_offset, 4)?.and_then(|e| le32(&e, 0)) else {
                break;
            };
            if !(EXFAT_FIRST_DATA_CLUSTER..=EXFAT_LAST_DATA_CLUSTER).contains(&next) {
                break;
            }
            cluster = next;
            offset = cluster_offset(cluster);
        }
    }
    Ok(Some(FsInfo {
        kind: FsKind::Other("exfat"),
        label,
        uuid: array::<4>(sb, 100).map(serial_uuid),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_print_as_blkid_does() {
        assert_eq!(serial_uuid([0xCD, 0xAB, 0x34, 0x12]), "1234-ABCD");
        assert_eq!(serial_uuid([0x05, 0x7d, 0xdd, 0x6b]), "6BDD-7D05");
    }

    fn entry(name: &[u8; 11], attr: u8, cluster: u16) -> Vec<u8> {
        let mut e = vec![0u8; DIR_ENTRY];
        e[..11].copy_from_slice(name);
        e[11] = attr;
        e[26..28].copy_from_slice(&cluster.to_le_bytes());
        e
    }

    #[test]
    fn the_label_entry_is_found_past_files_long_names_and_free_entries() {
        let mut dir = Vec::new();
        dir.extend(entry(b"README  TXT", 0x20, 3));
        dir.extend(entry(b"\xE5OLD    TXT", ATTR_VOLUME_ID, 0));
        dir.extend(entry(b"Alongname\0\0", ATTR_LONG_NAME, 0));
        dir.extend(entry(b"SUBDIR     ", ATTR_DIR | ATTR_VOLUME_ID, 0));
        dir.extend(entry(b"\x05TIQUETTE  ", ATTR_VOLUME_ID | 0x20, 0));
        match fat_scan(&dir) {
            Scan::Label(name) => assert_eq!(&name, b"\xE5TIQUETTE  "),
            _ => panic!("label entry not found"),
        }
        let mut ended = entry(b"README  TXT", 0x20, 3);
        ended.extend(vec![0u8; DIR_ENTRY]);
        ended.extend(entry(b"LATE       ", ATTR_VOLUME_ID, 0));
        assert!(matches!(fat_scan(&ended), Scan::End));
    }
}
