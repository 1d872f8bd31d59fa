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

#[cfg(test)]
mod tests {
    use super::*;

    const GPT: &[u8] = include_bytes!("../../tests/fixtures/probe/gpt.img");
    const MBR: &[u8] = include_bytes!("../../tests/fixtures/probe/mbr.img");

    fn parsed(buf: &[u8], sector_size: u32) -> Vec<PartEntry> {
        parse_table(buf, sector_size)
            .expect("valid")
            .expect("a table")
    }

    fn error(buf: &[u8]) -> String {
        parse_table(buf, 512)
            .expect_err("must be rejected")
            .to_string()
    }

    // Expected values are what `sfdisk -d` prints for the same images.
    fn gpt_entries() -> Vec<PartEntry> {
        vec![
            PartEntry {
                number: 1,
                partuuid: "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7081".into(),
                name: Some("rootfs".into()),
                first_lba: 2048,
                last_lba: 2048 + 4096 - 1,
            },
            PartEntry {
                number: 2,
                partuuid: "c0ffee00-1234-4567-89ab-cdef01234567".into(),
                name: Some("överlay".into()),
                first_lba: 6144,
                last_lba: 16350,
            },
        ]
    }

    #[test]
    fn gpt_from_sgdisk_with_names_and_guids() {
        assert_eq!(TABLE_BYTES, table_bytes(512));
        assert_eq!(GPT.len(), TABLE_BYTES);
        assert_eq!(parsed(GPT, 512), gpt_entries());
    }

    /// The same table laid out on a disk with 4 KiB logical sectors: the header
    /// moves to byte 4096 and the entries to byte 8192; every LBA stays as it is.
    #[test]
    fn gpt_with_4k_sectors() {
        let mut disk = vec![0u8; table_bytes(4096)];
        disk[..512].copy_from_slice(&GPT[..512]);
        disk[4096..4096 + 512].copy_from_slice(&GPT[512..1024]);
        disk[8192..8192 + 16384].copy_from_slice(&GPT[1024..]);
        assert_eq!(parsed(&disk, 4096), gpt_entries());
        // Read as 512-byte sectors there is no header in LBA 1.
        assert_eq!(error(&disk), "protective MBR but no GPT header in LBA 1");
        // TABLE_BYTES is not enough for 4 KiB sectors.
        let short = parse_table(&disk[..TABLE_BYTES], 4096).unwrap_err();
        assert!(short
            .to_string()
            .starts_with("GPT partition entries truncated"));
    }

    /// A hybrid MBR (0xEE next to real entries, as `sgdisk -h` writes) still
    /// means GPT, as it does for the kernel.
    #[test]
    fn hybrid_mbr_means_gpt() {
        let mut hybrid = GPT.to_vec();
        hybrid.copy_within(446..462, 446 + 16);
        hybrid[446..462].copy_from_slice(&MBR[446..462]);
        assert_ne!(hybrid[446 + 4], MBR_TYPE_GPT_PROTECTIVE);
        assert_eq!(parsed(&hybrid, 512), gpt_entries());
    }

    #[test]
    fn mbr_from_sfdisk_with_disk_identifier() {
        assert_eq!(
            parsed(MBR, 512),
            vec![
                PartEntry {
                    number: 1,
                    partuuid: "1234abcd-01".into(),
                    name: None,
                    first_lba: 2048,
                    last_lba: 6143,
                },
                PartEntry {
                    number: 2,
                    partuuid: "1234abcd-02".into(),
                    name: None,
                    first_lba: 6144,
                    last_lba: 14335,
                },
            ]
        );
    }

    #[test]
    fn mbr_numbers_follow_the_slot_not_the_count() {
        let mut mbr = MBR.to_vec();
        // Move partition 2 into slot 4: the kernel would call it sda4.
        mbr.copy_within(446 + 16..446 + 32, 446 + 48);
        mbr[446 + 16..446 + 32].fill(0);
        let entries = parsed(&mbr, 512);
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.number, e.partuuid.as_str()))
                .collect::<Vec<_>>(),
            [(1, "1234abcd-01"), (4, "1234abcd-04")]
        );
    }

    #[test]
    fn no_table_is_none() {
        assert_eq!(parse_table(&[], 512), Ok(None));
        assert_eq!(parse_table(&MBR[..511], 512), Ok(None));
        assert_eq!(parse_table(&[0; TABLE_BYTES], 512), Ok(None));
        // Boot code where the entries should be (boot flag 0x3c): not a table.
        let mut boot_code = MBR.to_vec();
        boot_code[446] = 0x3c;
        assert_eq!(parse_table(&boot_code, 512), Ok(None));
        // A filesystem image: the superblock readers' fixtures are not tables.
        let ext4 = include_bytes!("../../tests/fixtures/probe/ext4.img");
        assert_eq!(parse_table(ext4, 512), Ok(None));
    }

    #[test]
    fn fat_boot_sector_is_not_a_partition_table() {
        let mut fat = vec![0u8; 512];
        fat[11..13].copy_from_slice(&512u16.to_le_bytes());
        fat[13] = 4;
        fat[14] = 1;
        fat[16] = 2;
        fat[21] = 0xF8;
        fat[54..62].copy_from_slice(b"FAT16   ");
        fat[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(parse_table(&fat, 512), Ok(None));
    }

    #[test]
    fn sector_size_must_be_a_power_of_two() {
        for bad in [0, 256, 520, 1 << 17] {
            let e = parse_table(GPT, bad).unwrap_err();
            assert_eq!(e.to_string(), format!("sector size {bad} invalid"));
        }
    }

    #[test]
    fn damaged_gpt_is_an_error_not_the_protective_mbr() {
        let mut header = GPT.to_vec();
        header[512 + 56] ^= 1; // disk GUID
        assert_eq!(error(&header), "GPT header checksum mismatch");
        let mut entries = GPT.to_vec();
        entries[1024 + 56] ^= 1; // first partition name
        assert_eq!(error(&entries), "GPT partition entries checksum mismatch");
        let mut signature = GPT.to_vec();
        signature[512] = b'X';
        assert_eq!(
            error(&signature),
            "protective MBR but no GPT header in LBA 1"
        );
        assert_eq!(
            error(&GPT[..600]),
            "GPT header truncated (need 604 bytes, have 600)"
        );
        assert_eq!(
            error(&GPT[..TABLE_BYTES - 1]),
            "GPT partition entries truncated (need 17408 bytes, have 17407)"
        );
    }

    /// Every bit of the GPT header and entries is covered by a CRC: a flip is
    /// an error, or (in the unused rest of the header sector) changes nothing.
    #[test]
    fn no_single_bit_flip_in_the_gpt_gives_a_wrong_answer() {
        let full = parsed(GPT, 512);
        let mut buf = GPT.to_vec();
        // The whole header sector and the two used entries, plus one unused.
        for offset in (512..1024).chain(1024..1024 + 3 * 128) {
            for bit in 0..8 {
                buf[offset] ^= 1 << bit;
                if let Ok(found) = parse_table(&buf, 512) {
                    assert_eq!(found.as_ref(), Some(&full), "bit {bit} of byte {offset}");
                    assert!(offset >= 512 + 92, "flip at {offset} unnoticed");
                }
                buf[offset] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn every_prefix_is_an_error_none_or_the_full_answer() {
        for fixture in [GPT, MBR] {
            let full = parsed(fixture, 512);
            for len in 0..=fixture.len() {
                if let Ok(Some(found)) = parse_table(&fixture[..len], 512) {
                    assert_eq!(found, full, "prefix of {len} bytes");
                }
            }
        }
    }

    #[test]
    fn absurd_gpt_geometry_is_rejected_without_allocating() {
        // Rewrite header fields and fix up the header CRC, as a hostile disk would.
        let with_header = |offset: usize, value: &[u8]| {
            let mut buf = GPT.to_vec();
            buf[512 + offset..512 + offset + value.len()].copy_from_slice(value);
            buf[512 + 16..512 + 20].fill(0);
            let crc = crc32(&buf[512..512 + 92]);
            buf[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
            error(&buf)
        };
        assert!(with_header(80, &u32::MAX.to_le_bytes()).contains("too many"));
        assert!(with_header(84, &100u32.to_le_bytes()).contains("entry size 100"));
        assert!(with_header(72, &u64::MAX.to_le_bytes()).contains("LBA 18446744073709551615"));
        assert!(with_header(72, &1u64.to_le_bytes()).contains("overlap"));
        assert!(with_header(12, &4096u32.to_le_bytes()).contains("header size 4096"));
        assert!(with_header(24, &7u64.to_le_bytes()).contains("at LBA 7"));
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut rng = crate::test_rng::XorShift::new(0x2545_F491_4F6C_DD1D);
        for round in 0..3000 {
            let fixture = if round % 2 == 0 { GPT } else { MBR };
            let buf = rng.mutate(fixture, 1200);
            let sector_size = [512, 1024, 4096][round % 3];
            let _ = parse_table(&buf, sector_size);
        }
    }
}
