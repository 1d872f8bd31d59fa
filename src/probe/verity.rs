//! The dm-verity superblock, as `veritysetup format` writes it at the start of
//! the hash area (offset 0 of a separate hash device, or `--hash-offset` of the
//! data device).
//!
//! Layout (cryptsetup `lib/verity/verity.c`, `struct verity_sb`, 512 bytes,
//! little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `verity\0\0` |
//! | 8 | 4 | superblock version (1) |
//! | 12 | 4 | hash type: 0 Chrome OS, 1 normal (the table's `<version>`) |
//! | 16 | 16 | UUID |
//! | 32 | 32 | hash algorithm, NUL-terminated (`sha256`) |
//! | 64 | 4 | data block size |
//! | 68 | 4 | hash block size |
//! | 72 | 8 | data blocks |
//! | 80 | 2 | salt size |
//! | 88 | 256 | salt |
//!
//! The superblock is cryptsetup's, not the kernel's: the kernel target gets
//! every value on its table line; the reader exists so the user passes only the
//! root hash.

use super::bytes::{le16, le32, le64, slice};
use super::ProbeError;

/// Bytes of the superblock; the hash tree starts at the first hash block after it.
pub const SUPERBLOCK_BYTES: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const MAX_SALT: usize = 256;
/// Block sizes dm-verity accepts: a power of two from 512 bytes to the page size
/// (checked by the kernel); cryptsetup's own limit is 512 KiB.
const MIN_BLOCK: u32 = 512;
const MAX_BLOCK: u32 = 512 * 1024;

/// What the superblock says; everything the table line needs but the root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySuperblock {
    /// Superblock format version (1 is the only one).
    pub version: u32,
    /// 1: normal (salt before the data); 0: Chrome OS (salt after).
    pub hash_type: u32,
    pub uuid: [u8; 16],
    /// Kernel crypto API name, e.g. `sha256`.
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl VeritySuperblock {
    /// The UUID as `veritysetup dump` prints it.
    pub fn uuid_string(&self) -> String {
        let hex = hex_lower(&self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// Bytes of data the tree covers.
    pub fn data_bytes(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The bytes of an even number of hex digits (either case); `None` for
/// anything else (an odd count, a non-hex character).
pub fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16);
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        bytes.push((digit(pair[0])? << 4 | digit(pair[1])?) as u8);
    }
    Some(bytes)
}

/// Whether `buf` starts with a verity superblock's signature.
pub fn has_signature(buf: &[u8]) -> bool {
    buf.starts_with(SIGNATURE)
}

/// Read the superblock at the start of `buf` (the bytes at the hash offset).
/// `Ok(None)`: no verity signature there. `Err`: a signature with values that
/// make no sense (truncated, unknown version, bad sizes, a salt too long).
pub fn read(buf: &[u8]) -> Result<Option<VeritySuperblock>, ProbeError> {
    if !has_signature(buf) {
        return Ok(None);
    }
    if buf.len() < SUPERBLOCK_BYTES {
        return Err(ProbeError::new("verity superblock truncated"));
    }
    // Every field is inside the 512 bytes checked above.
    let u32_at = |at| le32(buf, at).unwrap_or_default();
    let version = u32_at(8);
    let hash_type = u32_at(12);
    let uuid: [u8; 16] = slice(buf, 16, 16)
        .and_then(|s| s.try_into().ok())
        .unwrap_or_default();
    let field = slice(buf, 32, 32).unwrap_or_default();
    let terminated = field.iter().position(|&b| b == 0);
    let algorithm = &field[..terminated.unwrap_or(0)];
    let data_block_size = u32_at(64);
    let hash_block_size = u32_at(68);
    let data_blocks = le64(buf, 72).unwrap_or_default();
    let salt_size = usize::from(le16(buf, 80).unwrap_or_default());
    let block_ok = |size: u32| size.is_power_of_two() && (MIN_BLOCK..=MAX_BLOCK).contains(&size);
    let name_ok = !algorithm.is_empty()
        && algorithm
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'(' | b')'));
    let size_ok = data_blocks > 0
        && data_blocks
            .checked_mul(u64::from(data_block_size))
            .is_some_and(|bytes| bytes / 512 <= i64::MAX as u64);
    // One message for every check: each costs the init's size.
    if version != 1
        || hash_type > 1
        || !name_ok
        || !block_ok(data_block_size)
        || !block_ok(hash_block_size)
        || !size_ok
        || salt_size > MAX_SALT
    {
        return Err(ProbeError::new(format!(
            "verity superblock not supported or damaged: version {version}, hash type \
             {hash_type}, algorithm {:?}, block size {data_block_size}/{hash_block_size}, \
             {data_blocks} data blocks, salt of {salt_size} bytes",
            String::from_utf8_lossy(algorithm)
        )));
    }
    Ok(Some(VeritySuperblock {
        version,
        hash_type,
        uuid,
        algorithm: String::from_utf8_lossy(algorithm).into_owned(),
        data_block_size,
        hash_block_size,
        data_blocks,
        salt: slice(buf, 88, salt_size).unwrap_or_default().to_vec(),
    }))
}

/// Where the filesystem at the start of `buf` ends, in bytes, from its own
/// superblock: squashfs `bytes_used`, erofs `blocks`, ext2/3/4 `blocks_count`.
/// `None` for anything else. With [`appended_hash_offset`], this finds a tree
/// appended by `veritysetup format IMG IMG --hash-offset=$(stat -c %s IMG)`
/// without being told the offset.
pub fn filesystem_end(buf: &[u8]) -> Option<u64> {
    use super::bytes::{le32, u8_at};
    if le32(buf, 0) == Some(0x7371_7368) {
        // squashfs: "hsqs", bytes_used at 40.
        return le64(buf, 40).filter(|&n| n > 0);
    }
    const SB: usize = 1024;
    if le32(buf, SB) == Some(0xE0F5_E1E2) {
        // erofs: blkszbits at +12, blocks at +36.
        let bits = u32::from(u8_at(buf, SB + 12)?);
        if !(9..=16).contains(&bits) {
            return None;
        }
        let blocks = u64::from(le32(buf, SB + 36)?);
        return (blocks > 0).then(|| blocks << bits);
    }
    if le16(buf, SB + 56) == Some(0xEF53) {
        // ext2/3/4: blocks_count_lo at +4, log_block_size at +24, and with the
        // 64bit incompat feature (0x80 at +0x60) blocks_count_hi at +0x150.
        let log = le32(buf, SB + 24)?;
        if log > 6 {
            return None;
        }
        let mut blocks = u64::from(le32(buf, SB + 4)?);
        if le32(buf, SB + 0x60)? & 0x80 != 0 {
            blocks |= u64::from(le32(buf, SB + 0x150)?) << 32;
        }
        return (blocks > 0).then(|| blocks << (10 + log));
    }
    None
}

/// The hash offset of a tree appended right after a filesystem that ends at
/// `filesystem_end` bytes: the next 4 KiB boundary (mksquashfs pads its images
/// to 4 KiB; erofs and ext4 end on a block boundary).
pub fn appended_hash_offset(filesystem_end: u64) -> u64 {
    filesystem_end.next_multiple_of(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEPARATE: &[u8] = include_bytes!("../../tests/fixtures/verity/separate.img");
    const APPENDED: &[u8] = include_bytes!("../../tests/fixtures/verity/appended.img");
    const APPENDED_ODD: &[u8] = include_bytes!("../../tests/fixtures/verity/appended-odd.img");
    const SALT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UUID: &str = "5d8f3a1e-2b7c-4e9d-8a60-1c2b3d4e5f60";

    #[test]
    fn reads_veritysetup_superblock_of_a_separate_hash_device() {
        let sb = read(SEPARATE).unwrap().expect("a superblock");
        assert_eq!(sb.version, 1);
        assert_eq!(sb.hash_type, 1);
        assert_eq!(sb.algorithm, "sha256");
        assert_eq!(sb.data_block_size, 4096);
        assert_eq!(sb.hash_block_size, 4096);
        assert_eq!(sb.data_blocks, 4);
        assert_eq!(sb.data_bytes(), 16384);
        assert_eq!(hex_lower(&sb.salt), SALT);
        assert_eq!(sb.uuid_string(), UUID);
    }

    #[test]
    fn reads_superblock_at_the_hash_offset_of_an_appended_tree() {
        assert_eq!(read(APPENDED).unwrap(), None, "data, not a superblock");
        let sb = read(&APPENDED[16384..]).unwrap().expect("a superblock");
        assert_eq!(sb.data_blocks, 4);
        assert_eq!(hex_lower(&sb.salt), SALT);

        let odd = read(&APPENDED_ODD[16896..]).unwrap().expect("a superblock");
        assert_eq!(odd.algorithm, "sha1");
        assert_eq!(odd.data_block_size, 4096);
        assert_eq!(odd.hash_block_size, 1024);
        assert_eq!(odd.data_blocks, 4);
        assert!(odd.salt.is_empty(), "--salt=- gives no salt");
    }

    #[test]
    fn filesystem_end_from_real_superblocks() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/probe/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        // The squashfs fixture is a whole image: it ends where the file does.
        let squashfs = fixture("squashfs.img");
        let end = filesystem_end(&squashfs).unwrap();
        assert!(end <= squashfs.len() as u64 && end > 96, "{end}");
        assert_eq!(appended_hash_offset(end), squashfs.len() as u64);
        // erofs: one 4 KiB block (the fixture is the whole image); ext4: the
        // 8 MiB mkfs.ext4 was given (the fixture keeps only its start).
        let erofs = fixture("erofs.img");
        assert_eq!(filesystem_end(&erofs), Some(erofs.len() as u64));
        assert_eq!(filesystem_end(&fixture("ext4.img")), Some(8 << 20));
        assert_eq!(filesystem_end(&fixture("swap.img")), None);
        assert_eq!(filesystem_end(SEPARATE), None);
        assert_eq!(filesystem_end(&[]), None);
        assert_eq!(appended_hash_offset(4097), 8192);
        assert_eq!(appended_hash_offset(8192), 8192);
    }

    #[test]
    fn rejects_truncated_and_corrupt_superblocks() {
        let good = &SEPARATE[..SUPERBLOCK_BYTES];
        for len in [8, 12, 100, 511] {
            let error = read(&good[..len]).unwrap_err();
            assert!(error.reason().contains("truncated"), "{len}: {error}");
        }
        let patched = |offset: usize, bytes: &[u8]| {
            let mut copy = good.to_vec();
            copy[offset..offset + bytes.len()].copy_from_slice(bytes);
            read(&copy).unwrap_err().reason().to_string()
        };
        assert!(patched(8, &2u32.to_le_bytes()).contains("version 2,"));
        assert!(patched(12, &7u32.to_le_bytes()).contains("hash type 7,"));
        assert!(patched(32, &[b'x'; 32]).contains("algorithm \"\""));
        assert!(patched(32, b"sha 256\0").contains("algorithm \"sha 256\""));
        assert!(patched(32, b"\0").contains("algorithm \"\""));
        assert!(patched(64, &4000u32.to_le_bytes()).contains("block size 4000/4096"));
        assert!(patched(68, &256u32.to_le_bytes()).contains("block size 4096/256"));
        assert!(patched(72, &0u64.to_le_bytes()).contains(" 0 data blocks"));
        assert!(patched(72, &u64::MAX.to_le_bytes()).contains("18446744073709551615 data"));
        assert!(patched(80, &257u16.to_le_bytes()).contains("salt of 257"));
        // A damaged signature is "no superblock", not an error.
        let mut copy = good.to_vec();
        copy[0] ^= 1;
        assert_eq!(read(&copy).unwrap(), None);
        assert_eq!(read(&[]).unwrap(), None);
    }
}
