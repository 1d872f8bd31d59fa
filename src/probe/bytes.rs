//! Bounds-checked little/big-endian field reads and on-disk string decoding.
//! Every read returns `None` past the end of the buffer, so readers never index
//! out of range.

pub(crate) fn slice(buf: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    buf.get(offset..offset.checked_add(len)?)
}

pub(crate) fn array<const N: usize>(buf: &[u8], offset: usize) -> Option<[u8; N]> {
    slice(buf, offset, N)?.try_into().ok()
}

pub(crate) fn u8_at(buf: &[u8], offset: usize) -> Option<u8> {
    buf.get(offset).copied()
}

pub(crate) fn le16(buf: &[u8], offset: usize) -> Option<u16> {
    array(buf, offset).map(u16::from_le_bytes)
}

pub(crate) fn be16(buf: &[u8], offset: usize) -> Option<u16> {
    array(buf, offset).map(u16::from_be_bytes)
}

pub(crate) fn le32(buf: &[u8], offset: usize) -> Option<u32> {
    array(buf, offset).map(u32::from_le_bytes)
}

pub(crate) fn be32(buf: &[u8], offset: usize) -> Option<u32> {
    array(buf, offset).map(u32::from_be_bytes)
}

pub(crate) fn le64(buf: &[u8], offset: usize) -> Option<u64> {
    array(buf, offset).map(u64::from_le_bytes)
}

/// A UUID stored as 16 raw bytes (ext4, erofs), printed the way blkid does.
/// All-zero means "no UUID".
pub(crate) fn raw_uuid(bytes: [u8; 16]) -> Option<String> {
    if bytes == [0; 16] {
        return None;
    }
    Some(format_uuid(&bytes))
}

/// A GPT GUID: the first three fields are little-endian on disk.
pub(crate) fn guid(bytes: [u8; 16]) -> String {
    let mut b = bytes;
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    format_uuid(&b)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex = |range: std::ops::Range<usize>| -> String {
        b[range].iter().map(|x| format!("{x:02x}")).collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

/// A fixed-size, NUL-padded label field. Empty means "no label"; bytes that
/// are not UTF-8 are replaced, as they could never match a `LABEL=` anyway.
pub(crate) fn nul_padded_label(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    if end == 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&field[..end]).into_owned())
}

/// A fixed-size UTF-16LE name (GPT partition name), up to the first NUL.
pub(crate) fn utf16le_name(field: &[u8]) -> Option<String> {
    let units = field
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    let name: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    (!name.is_empty()).then_some(name)
}

/// C `isspace` in the C locale: what blkid trims from the end of a label.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// A label the way blkid stores one (`blkid_probe_set_label`): the bytes up to
/// the first NUL, trailing whitespace trimmed; empty means "no label". Bytes
/// that are not UTF-8 are replaced (such a label could never match a `LABEL=`).
pub(crate) fn blkid_label(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    let mut text = &field[..end];
    while let [rest @ .., last] = text {
        if !is_c_space(*last) {
            break;
        }
        text = rest;
    }
    (!text.is_empty()).then(|| String::from_utf8_lossy(text).into_owned())
}

/// A UTF-16 label the way blkid stores one (`blkid_probe_set_utf8label`): decoded
/// up to the first NUL code unit, an odd trailing byte ignored, trailing
/// whitespace trimmed; a lone surrogate is replaced.
pub(crate) fn blkid_utf16_label(field: &[u8], big_endian: bool) -> Option<String> {
    let units = field
        .chunks_exact(2)
        .map(|c| {
            if big_endian {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        })
        .take_while(|&u| u != 0);
    let text: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    let trimmed = text.trim_end_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_none() {
        let buf = [1u8, 2, 3];
        assert_eq!(le16(&buf, 1), Some(0x0302));
        assert_eq!(le16(&buf, 2), None);
        assert_eq!(le32(&buf, usize::MAX), None);
        assert_eq!(slice(&buf, usize::MAX, 2), None);
    }

    #[test]
    fn guid_swaps_the_first_three_fields() {
        let bytes = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        // The EFI System Partition type GUID.
        assert_eq!(guid(bytes), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            raw_uuid(bytes).unwrap(),
            "28732ac1-1ff8-d211-ba4b-00a0c93ec93b"
        );
        assert_eq!(raw_uuid([0; 16]), None);
    }

    #[test]
    fn labels_stop_at_nul_and_empty_is_none() {
        assert_eq!(nul_padded_label(b"root\0\0\0x"), Some("root".into()));
        assert_eq!(nul_padded_label(b"\0abc"), None);
        assert_eq!(nul_padded_label(b"full"), Some("full".into()));
        let utf16: Vec<u8> = "bööt".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut field = utf16.clone();
        field.extend_from_slice(&[0, 0, b'x', 0]);
        assert_eq!(utf16le_name(&field), Some("bööt".into()));
        assert_eq!(utf16le_name(&[0, 0, b'a', 0]), None);
        // An odd trailing byte is ignored, a lone surrogate is replaced.
        assert_eq!(utf16le_name(&[0x00, 0xd8, b'a']), Some("\u{fffd}".into()));
    }

    #[test]
    fn blkid_labels_stop_at_nul_and_lose_trailing_whitespace_only() {
        assert_eq!(blkid_label(b"LIVEUSB    "), Some("LIVEUSB".into()));
        assert_eq!(blkid_label(b" My Live \t\r\0junk"), Some(" My Live".into()));
        assert_eq!(blkid_label(b"           "), None);
        assert_eq!(blkid_label(b"\0ABC"), None);
        let be: Vec<u8> = "Ünï  ".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(blkid_utf16_label(&be, true), Some("Ünï".into()));
        let le: Vec<u8> = "exFAT\0x"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(blkid_utf16_label(&le, false), Some("exFAT".into()));
        assert_eq!(blkid_utf16_label(&[0, b' ', 0, b' '], true), None);
    }
}
