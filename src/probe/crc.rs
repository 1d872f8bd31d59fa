//! CRC32 (IEEE 802.3, used by GPT) and CRC32C (Castagnoli, used by ext4 and erofs).
//!
//! Both are the reflected table-driven form. The `*_raw` functions keep the
//! running register without the final inversion, which is what the kernel's
//! `crc32c(seed, ...)` returns and what ext4/erofs store on disk.

const fn make_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC32_TABLE: [u32; 256] = make_table(0xEDB8_8320);
static CRC32C_TABLE: [u32; 256] = make_table(0x82F6_3B78);

fn update(table: &[u32; 256], mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc = table[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC32 register after `data`, starting from `seed`, without final inversion
/// (the kernel's `crc32_le(seed, data, len)`).
pub fn crc32_raw(seed: u32, data: &[u8]) -> u32 {
    update(&CRC32_TABLE, seed, data)
}

/// Standard CRC32 (zlib, GPT): initial value and final xor `0xFFFFFFFF`.
pub fn crc32(data: &[u8]) -> u32 {
    !crc32_raw(!0, data)
}

/// CRC32C register after `data`, starting from `seed`, without final inversion
/// (the kernel's `crc32c(seed, data, len)`).
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    update(&CRC32C_TABLE, seed, data)
}

/// Standard CRC32C (iSCSI): initial value and final xor `0xFFFFFFFF`.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_raw(!0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Check values from the CRC catalogue ("123456789").
    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn raw_forms_chain_across_split_input() {
        let whole = crc32c_raw(!0, b"hello world");
        let split = crc32c_raw(crc32c_raw(!0, b"hello "), b"world");
        assert_eq!(whole, split);
        assert_eq!(!crc32_raw(!0, b"123456789"), 0xCBF4_3926);
    }
}
