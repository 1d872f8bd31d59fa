//! ISO 9660 (CD-ROM, DVD, live ISO images), with the Joliet extension's label.
//!
//! What `blkid` (util-linux 2.38) reports, so that `root=LABEL=`/`UUID=` name the
//! same device here as in `/dev/disk/by-label`:
//! - LABEL: the primary volume descriptor's volume ID; with a Joliet
//!   supplementary descriptor, its UTF-16 volume ID merged with the primary one
//!   (Joliet holds 16 characters, the primary 32 with `_` for what it cannot
//!   represent), or the Joliet one alone when they disagree.
//! - UUID: the volume modification date, else the creation date, as
//!   `YYYY-MM-DD-HH-MM-SS-CC` (a date of all `0` with offset 0 is "unset").
//!
//! Rock Ridge lives in directory records and changes none of this.

use super::bytes::{blkid_label, blkid_utf16_label, slice, u8_at};
use super::source::ByteSource;
use super::superblock::{FsInfo, FsKind};
use super::ProbeError;

/// The first volume descriptor sits in sector 16.
pub(crate) const VD_SET_OFFSET: u64 = 16 * SECTOR;
const SECTOR: u64 = 2048;
/// blkid looks at no more than 16 descriptors.
const VD_MAX: u64 = 16;
/// The bytes of a descriptor read here: up to the end of the effective date.
const VD_LEN: usize = 881;

const VD_BOOT_RECORD: u8 = 0;
const VD_PRIMARY: u8 = 1;
const VD_SUPPLEMENTARY: u8 = 2;
const VD_END: u8 = 255;

const VOLUME_ID: usize = 40;
const ID_LEN: usize = 32;
const ESCAPE_SEQUENCES: usize = 88;
const CREATED: usize = 813;
const MODIFIED: usize = 830;
/// UCS-2 levels 1, 2 and 3: the escape sequences that mark a Joliet descriptor.
const JOLIET_ESCAPES: [&[u8; 3]; 3] = [b"%/@", b"%/C", b"%/E"];

pub(crate) fn probe(head: &[u8], src: &mut dyn ByteSource) -> Result<Option<FsInfo>, ProbeError> {
    if slice(head, VD_SET_OFFSET as usize + 1, 5) != Some(b"CD001") {
        return Ok(None);
    }
    let mut primary: Option<Vec<u8>> = None;
    let mut joliet: Option<Vec<u8>> = None;
    let mut boot_seen = false;
    for n in 0..VD_MAX {
        if boot_seen && primary.is_some() && joliet.is_some() {
            break;
        }
        let offset = VD_SET_OFFSET + n * SECTOR;
        let desc = match slice(head, offset as usize, VD_LEN) {
            Some(desc) => desc.to_vec(),
            None => src.read_at(offset, VD_LEN)?,
        };
        // A device ends after its descriptor set: a short read is a cut copy,
        // which could hide the Joliet descriptor (and so change the label).
        if desc.len() < VD_LEN {
            return Err(ProbeError::new("iso9660 volume descriptor set truncated"));
        }
        if desc[0] == VD_END {
            break;
        }
        match desc[0] {
            VD_BOOT_RECORD => boot_seen = true,
            VD_PRIMARY if primary.is_none() => primary = Some(desc),
            VD_SUPPLEMENTARY if joliet.is_none() => {
                let escapes = &desc[ESCAPE_SEQUENCES..ESCAPE_SEQUENCES + 3];
                if JOLIET_ESCAPES.iter().any(|e| e.as_slice() == escapes) {
                    joliet = Some(desc);
                }
            }
            _ => {}
        }
    }
    let Some(pvd) = primary else {
        return Err(ProbeError::new(
            "iso9660 volume descriptor set without a primary descriptor",
        ));
    };
    let volume_id = &pvd[VOLUME_ID..VOLUME_ID + ID_LEN];
    let label = match &joliet {
        Some(svd) => {
            let wide = &svd[VOLUME_ID..VOLUME_ID + ID_LEN];
            match merge_utf16be_ascii(wide, volume_id) {
                Some(merged) => blkid_utf16_label(&merged, true),
                None => blkid_utf16_label(wide, true),
            }
        }
        None => blkid_label(volume_id),
    };
    let uuid =
        date_uuid(&pvd[MODIFIED..MODIFIED + 17]).or_else(|| date_uuid(&pvd[CREATED..CREATED + 17]));
    Ok(Some(FsInfo {
        kind: FsKind::Other("iso9660"),
        label,
        uuid,
    }))
}

/// blkid's reconstruction of a label from its Joliet (UTF-16BE, `wide`) and
/// primary (`ascii`) forms: when the Joliet text is a prefix of the primary one
/// (ignoring case and the `_` that stands for what either cannot represent),
/// the Joliet characters followed by the rest of the primary ID, as UTF-16BE.
/// `None` when they disagree. Both fields have the same length.
fn merge_utf16be_ascii(wide: &[u8], ascii: &[u8]) -> Option<Vec<u8>> {
    let len = ascii.len().min(wide.len());
    let mut out = Vec::with_capacity(2 * len + 4);
    let (mut a, mut u) = (0, 0);
    while u + 1 < len && a < len {
        // A surrogate pair (a code point above U+FFFF) stands for one character.
        if (0xD8..=0xDB).contains(&wide[u]) && u + 3 < len && (0xDC..=0xDF).contains(&wide[u + 2]) {
            out.extend_from_slice(&wide[u..u + 2]);
            u += 2;
        }
        let (hi, lo, c) = (wide[u], wide[u + 1], ascii[a]);
        if c == b'_' {
            out.extend_from_slice(&[hi, lo]);
        } else if hi == 0 && lo == b'_' {
            out.extend_from_slice(&[0, c]);
        } else if hi == 0 && c.eq_ignore_ascii_case(&lo) {
            out.extend_from_slice(&[0, if c.is_ascii_uppercase() { lo } else { c }]);
        } else {
            return None;
        }
        a += 1;
        u += 2;
    }
    for &c in &ascii[a..len] {
        out.extend_from_slice(&[0, c]);
    }
    Some(out)
}

/// `YYYY-MM-DD-HH-MM-SS-CC` from a 17-byte ISO 9660 date (16 digits and a
/// time-zone offset); `None` for the "unset" date.
fn date_uuid(date: &[u8]) -> Option<String> {
    let digits = date.get(..16)?;
    let offset = u8_at(date, 16)?;
    if digits.iter().all(|&c| c == b'0') && offset == 0 {
        return None;
    }
    let text: String = digits.iter().map(|&c| char::from(c)).collect();
    // blkid prints the bytes with %c: a NUL would end its string there.
    let text = match text.find('\0') {
        Some(end) => &text[..end],
        None => &text,
    };
    let mut uuid = String::with_capacity(23);
    for (i, c) in text.chars().enumerate() {
        if [4, 6, 8, 10, 12, 14].contains(&i) {
            uuid.push('-');
        }
        uuid.push(c);
    }
    (!uuid.is_empty()).then_some(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(s: &str) -> Vec<u8> {
        let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
        while v.len() < ID_LEN {
            v.extend_from_slice(&[0, b' ']);
        }
        v.truncate(ID_LEN);
        v
    }

    fn ascii(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.resize(ID_LEN, b' ');
        v
    }

    fn merged(wide: &str, narrow: &str) -> Option<String> {
        merge_utf16be_ascii(&be(wide), &ascii(narrow)).and_then(|m| blkid_utf16_label(&m, true))
    }

    #[test]
    fn joliet_prefix_is_completed_from_the_primary_id() {
        // Joliet keeps 16 characters, the primary ID 32.
        assert_eq!(
            merged("A_Very_Long_Live", "A_Very_Long_Live_Label_2024"),
            Some("A_Very_Long_Live_Label_2024".into())
        );
        // The primary ID's `_` stands for a character it cannot hold.
        assert_eq!(merged("Überlive", "_BERLIVE"), Some("Überlive".into()));
        // Case: an upper-case primary character takes the Joliet one.
        assert_eq!(merged("MyLive", "MYLIVE"), Some("MyLive".into()));
        assert_eq!(merged("MYLIVE", "mylive"), Some("mylive".into()));
        // Disagreement: no merge, the caller takes the Joliet ID alone.
        assert_eq!(merged("Other", "MYLIVE"), None);
        // A character beyond U+FFFF (a surrogate pair) in Joliet, `_` in the primary.
        assert_eq!(merged("a😀b", "a_b"), Some("a😀b".into()));
    }

    #[test]
    fn dates_give_the_uuid_and_an_unset_date_none() {
        assert_eq!(
            date_uuid(b"2024010203040506\x00"),
            Some("2024-01-02-03-04-05-06".into())
        );
        assert_eq!(date_uuid(b"0000000000000000\x00"), None);
        assert_eq!(
            date_uuid(b"0000000000000000\x04"),
            Some("0000-00-00-00-00-00-00".into())
        );
        assert_eq!(date_uuid(b"2024"), None);
    }
}
