//! `/proc/self/mountinfo`, parsed (pure): the one parser, used by the boot
//! mode detection (`router`) and by `sys::mount::is_mountpoint`.

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfoEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub device: String,
    pub root: String,
    pub mount_point: String,
    pub mount_options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Parse one mountinfo line:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`.
pub fn parse_mountinfo_line(line: &str) -> Option<MountInfoEntry> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let device = fields.next()?.to_string();
    let root = unescape_octal(fields.next()?);
    let mount_point = unescape_octal(fields.next()?);
    let mount_options = fields.next()?.to_string();
    let mut fields = after.split(' ');
    let fstype = fields.next()?.to_string();
    let source = unescape_octal(fields.next()?);
    let super_options = fields.next().unwrap_or("").to_string();
    Some(MountInfoEntry {
        mount_id,
        parent_id,
        device,
        root,
        mount_point,
        mount_options,
        fstype,
        source,
        super_options,
    })
}

/// Every parseable line of a mountinfo text, in order.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfoEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_line_with_optional_fields_and_escapes() {
        let e = parse_mountinfo_line(
            "36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(e.mount_id, 36);
        assert_eq!(e.parent_id, 35);
        assert_eq!(e.device, "98:0");
        assert_eq!(e.root, "/mnt1");
        assert_eq!(e.mount_point, "/mnt 2");
        assert_eq!(e.mount_options, "rw,noatime");
        assert_eq!(e.fstype, "ext3");
        assert_eq!(e.source, "/dev/root");
        assert_eq!(e.super_options, "rw,errors=continue");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(parse_mountinfo_line(""), None);
        assert_eq!(parse_mountinfo_line("36 35 98:0 / / rw"), None);
        assert_eq!(
            parse_mountinfo_line("x 35 98:0 / / rw - ext4 /dev/a rw"),
            None
        );
        assert_eq!(
            parse_mountinfo("garbage\n1 1 0:2 / / rw - rootfs rootfs rw\n").len(),
            1
        );
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_octal(r"/a\040b"), "/a b");
        assert_eq!(unescape_octal(r"/a\134b"), "/a\\b");
        assert_eq!(unescape_octal(r"/x\04"), r"/x\04");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }
}
