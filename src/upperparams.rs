//! Pure parsers for the first-boot and flash parameters of the upper:
//! `ovl.format=`, `ovl.upperlabel=`, `ovl.upperfstype=`, the flash forms of
//! `ovl.upper=` (`ubi0:NAME`, `ubi:NAME`, `mtd:NAME`) and `ovl.ubiattach=`.
//!
//! Each takes the value as the command line gave it (`None` for a bare name) and
//! returns the typed value or an error that names the parameter and what it
//! accepts, ready for the command-line table.

use std::fmt;

use crate::fstype::FsType;

/// The default of `ovl.upperlabel=`.
pub const DEFAULT_UPPER_LABEL: &str = "overlay";

/// `ovl.format=`: whether a blank persistent upper is formatted on first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatPolicy {
    /// Format a blank (or our own interrupted) device; the default.
    #[default]
    Blank,
    /// Never format: a blank device means a tmpfs upper, as for any unusable one.
    Never,
}

/// `ovl.format=blank|never`.
pub fn parse_format(value: Option<&str>) -> Result<FormatPolicy, String> {
    match value {
        Some("blank") => Ok(FormatPolicy::Blank),
        Some("never") => Ok(FormatPolicy::Never),
        None | Some("") => Err("ovl.format needs a value; accepted: blank, never".into()),
        Some(v) => Err(format!("ovl.format={v}: accepted: blank, never")),
    }
}

/// `ovl.upperfstype=`: `ext4`, `f2fs`, or `auto`/empty (`None`: detect, and
/// format as ext4).
pub fn parse_upper_fstype(value: Option<&str>) -> Result<Option<FsType>, String> {
    const ACCEPTED: &str = "accepted: ext4, f2fs, auto";
    match value {
        None | Some("") | Some("auto") => Ok(None),
        Some(v) => match FsType::parse(v) {
            Some(t) if t.can_be_upper() => Ok(Some(t)),
            Some(t) => Err(format!(
                "ovl.upperfstype={v}: {t} cannot hold an upper (read-only); {ACCEPTED}"
            )),
            None => Err(format!("ovl.upperfstype={v}: not supported; {ACCEPTED}")),
        },
    }
}

/// The filesystem a first-boot format makes: `ovl.upperfstype=` or ext4.
pub fn format_fstype(upperfstype: Option<FsType>) -> FsType {
    upperfstype.unwrap_or(FsType::Ext4)
}

/// The longest label `fstype` can store: ext4 has 16 bytes, f2fs 512 UTF-16
/// units (mkfs.f2fs's `MAX_VOLUME_NAME`).
pub fn label_fits(label: &str, fstype: FsType) -> Result<(), String> {
    match fstype {
        FsType::F2fs => {
            let units = label.encode_utf16().count();
            if units > 512 {
                return Err(format!(
                    "ovl.upperlabel={label}: {units} UTF-16 units, f2fs labels hold at most 512"
                ));
            }
        }
        _ => {
            if label.len() > 16 {
                return Err(format!(
                    "ovl.upperlabel={label}: {} bytes, {fstype} labels hold at most 16",
                    label.len()
                ));
            }
        }
    }
    Ok(())
}

/// `ovl.upperlabel=LABEL`: not empty, printable (no spaces, control characters,
/// `/` or quotes, which `LABEL=` lookups and udev links cannot carry). The
/// length limit depends on the filesystem: check it with [`label_fits`] once
/// `ovl.upperfstype=` is known (the parameters come in any order).
pub fn parse_upper_label(value: Option<&str>) -> Result<String, String> {
    let label = match value {
        None | Some("") => {
            return Err("ovl.upperlabel needs a value, e.g. ovl.upperlabel=overlay".into())
        }
        Some(v) => v,
    };
    if let Some(bad) = label
        .chars()
        .find(|&c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '"' | '\'' | '\\'))
    {
        return Err(format!(
            "ovl.upperlabel={label}: {bad:?} is not allowed in a label (no spaces, control characters, / \\ or quotes)"
        ));
    }
    Ok(label.to_string())
}

/// A flash upper, as OpenWrt names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashSpec {
    /// `ubiN:NAME` (a volume on UBI device N) or `ubi:NAME` (`device: None`: UBI
    /// device 0, as the kernel's UBIFS reads it). Holds UBIFS.
    UbiVolume { device: Option<u32>, name: String },
    /// `mtd:NAME`: the MTD partition of that name. Holds JFFS2.
    Mtd { name: String },
}

impl fmt::Display for FlashSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlashSpec::UbiVolume {
                device: Some(n),
                name,
            } => write!(f, "ubi{n}:{name}"),
            FlashSpec::UbiVolume { device: None, name } => write!(f, "ubi:{name}"),
            FlashSpec::Mtd { name } => write!(f, "mtd:{name}"),
        }
    }
}

impl FlashSpec {
    /// The filesystem the upper has on this kind of flash.
    pub fn fstype(&self) -> &'static str {
        match self {
            FlashSpec::UbiVolume { .. } => "ubifs",
            FlashSpec::Mtd { .. } => "jffs2",
        }
    }

    /// What mount(2) takes as the source: the kernel's UBIFS opens `ubiN:NAME`
    /// and `ubi:NAME` itself, and JFFS2 (through `get_tree_mtd`) `mtd:NAME`, so
    /// neither needs a device node.
    pub fn mount_source(&self) -> String {
        self.to_string()
    }
}

/// One line of `/proc/mtd`: `mtd3: 00500000 00010000 "rootfs_data"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtdPartition {
    /// N of /dev/mtdN, what UBI's attach ioctl takes.
    pub index: u32,
    pub size: u64,
    pub erase_size: u32,
    pub name: String,
}

/// Parse `/proc/mtd` (its header line, then one partition a line).
pub fn parse_proc_mtd(text: &str) -> Result<Vec<MtdPartition>, String> {
    let mut parts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("dev:") {
            continue;
        }
        let bad = || format!("/proc/mtd: cannot read the line {line:?}");
        let (dev, rest) = line.split_once(':').ok_or_else(bad)?;
        let index = dev
            .strip_prefix("mtd")
            .and_then(parse_index)
            .ok_or_else(bad)?;
        let mut fields = rest.split_whitespace();
        let size = fields
            .next()
            .and_then(|f| u64::from_str_radix(f, 16).ok())
            .ok_or_else(bad)?;
        let erase_size = fields
            .next()
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .ok_or_else(bad)?;
        let quoted = rest.find('"').map(|at| &rest[at..]).ok_or_else(bad)?;
        let name = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .ok_or_else(bad)?;
        parts.push(MtdPartition {
            index,
            size,
            erase_size,
            name: name.to_string(),
        });
    }
    Ok(parts)
}

/// The MTD device `ovl.ubiattach=` names, among `parts`.
pub fn find_mtd<'a>(parts: &'a [MtdPartition], which: &UbiAttach) -> Option<&'a MtdPartition> {
    parts.iter().find(|p| match which {
        UbiAttach::Name(name) => p.name == *name,
        UbiAttach::Number(n) => p.index == *n,
    })
}

/// UBI volume names hold at most 127 bytes (`UBI_VOL_NAME_MAX`).
pub const UBI_VOL_NAME_MAX: usize = 127;

/// `ovl.upper=` in a flash form. `None` when the value is not one (`/dev/...`,
/// `LABEL=` and the other block-device forms are for [`crate::devspec`]);
/// `Some(Err)` when it is one but malformed.
pub fn parse_flash_upper(value: &str) -> Option<Result<FlashSpec, String>> {
    if let Some(name) = value.strip_prefix("mtd:") {
        return Some(mtd_name("ovl.upper", value, name).map(|name| FlashSpec::Mtd { name }));
    }
    let rest = value.strip_prefix("ubi")?;
    let (number, name) = rest.split_once(':')?;
    let device = if number.is_empty() {
        None
    } else {
        match parse_index(number) {
            Some(n) => Some(n),
            None => {
                return Some(Err(format!(
                    "ovl.upper={value}: expected ubiN:NAME (N a UBI device number) or ubi:NAME"
                )))
            }
        }
    };
    Some(ubi_volume_name(value, name).map(|name| FlashSpec::UbiVolume { device, name }))
}

fn ubi_volume_name(value: &str, name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err(format!("ovl.upper={value}: the UBI volume name is empty"));
    }
    if name.len() > UBI_VOL_NAME_MAX {
        return Err(format!(
            "ovl.upper={value}: UBI volume names hold at most {UBI_VOL_NAME_MAX} bytes, this one has {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "ovl.upper={value}: control characters in the UBI volume name"
        ));
    }
    Ok(name.to_string())
}

fn mtd_name(param: &str, value: &str, name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err(format!("{param}={value}: the MTD partition name is empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "{param}={value}: control characters in the MTD partition name"
        ));
    }
    Ok(name.to_string())
}

/// A decimal index without sign or leading zeros (beyond "0").
fn parse_index(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Which MTD device `ovl.ubiattach=` attaches to UBI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UbiAttach {
    /// `mtd:NAME`: the partition of that name (as in /proc/mtd).
    Name(String),
    /// `mtdN` or `N`: /dev/mtdN.
    Number(u32),
}

/// `ovl.ubiattach=mtd:NAME|mtdN|N`.
pub fn parse_ubiattach(value: Option<&str>) -> Result<UbiAttach, String> {
    const ACCEPTED: &str = "accepted: mtd:NAME (an MTD partition name), mtdN or N";
    let value = match value {
        None | Some("") => return Err(format!("ovl.ubiattach needs a value; {ACCEPTED}")),
        Some(v) => v,
    };
    if let Some(name) = value.strip_prefix("mtd:") {
        return mtd_name("ovl.ubiattach", value, name).map(UbiAttach::Name);
    }
    parse_index(value.strip_prefix("mtd").unwrap_or(value))
        .map(UbiAttach::Number)
        .ok_or_else(|| format!("ovl.ubiattach={value}: {ACCEPTED}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_policy() {
        assert_eq!(FormatPolicy::default(), FormatPolicy::Blank);
        assert_eq!(parse_format(Some("blank")), Ok(FormatPolicy::Blank));
        assert_eq!(parse_format(Some("never")), Ok(FormatPolicy::Never));
        for bad in [None, Some(""), Some("always"), Some("Blank")] {
            let e = parse_format(bad).unwrap_err();
            assert!(e.starts_with("ovl.format"), "{e}");
            assert!(e.contains("blank, never"), "{e}");
        }
    }

    #[test]
    fn upper_fstype_accepts_ext4_and_f2fs() {
        assert_eq!(parse_upper_fstype(Some("f2fs")), Ok(Some(FsType::F2fs)));
        assert_eq!(parse_upper_fstype(Some("ext4")), Ok(Some(FsType::Ext4)));
        assert_eq!(parse_upper_fstype(Some("ext2")), Ok(Some(FsType::Ext4)));
        assert_eq!(parse_upper_fstype(Some("auto")), Ok(None));
        assert_eq!(parse_upper_fstype(None), Ok(None));
        let e = parse_upper_fstype(Some("squashfs")).unwrap_err();
        assert!(
            e.contains("ovl.upperfstype=squashfs") && e.contains("read-only"),
            "{e}"
        );
        let e = parse_upper_fstype(Some("btrfs")).unwrap_err();
        assert!(
            e.contains("ovl.upperfstype=btrfs") && e.contains("ext4, f2fs, auto"),
            "{e}"
        );
        assert_eq!(format_fstype(None), FsType::Ext4);
        assert_eq!(format_fstype(Some(FsType::F2fs)), FsType::F2fs);
    }

    #[test]
    fn labels_are_checked_for_characters_and_length() {
        assert_eq!(parse_upper_label(Some("overlay")), Ok("overlay".into()));
        assert_eq!(
            parse_upper_label(Some("rootfs_data")),
            Ok("rootfs_data".into())
        );
        for bad in ["a/b", "a\"b", "tab\there", "a\\b"] {
            let e = parse_upper_label(Some(bad)).unwrap_err();
            assert!(e.starts_with("ovl.upperlabel="), "{e}");
        }
        assert!(parse_upper_label(None)
            .unwrap_err()
            .contains("needs a value"));
        // ext4: 16 bytes, counted in bytes (UTF-8), not characters.
        assert_eq!(label_fits("sixteen-bytes-ok", FsType::Ext4), Ok(()));
        let e = label_fits("seventeen-bytes-x", FsType::Ext4).unwrap_err();
        assert!(
            e.contains("17 bytes") && e.contains("ext4") && e.contains("16"),
            "{e}"
        );
        assert!(label_fits("ééééééééé", FsType::Ext4).is_err());
        // f2fs: 512 UTF-16 units.
        assert_eq!(label_fits(&"x".repeat(512), FsType::F2fs), Ok(()));
        let e = label_fits(&"x".repeat(513), FsType::F2fs).unwrap_err();
        assert!(e.contains("513 UTF-16 units") && e.contains("f2fs"), "{e}");
        assert_eq!(label_fits(DEFAULT_UPPER_LABEL, FsType::Ext4), Ok(()));
    }

    #[test]
    fn flash_upper_forms() {
        let ubi = |device, name: &str| FlashSpec::UbiVolume {
            device,
            name: name.into(),
        };
        assert_eq!(
            parse_flash_upper("ubi0:overlay"),
            Some(Ok(ubi(Some(0), "overlay")))
        );
        assert_eq!(
            parse_flash_upper("ubi12:rootfs_data"),
            Some(Ok(ubi(Some(12), "rootfs_data")))
        );
        assert_eq!(
            parse_flash_upper("ubi:rootfs_data"),
            Some(Ok(ubi(None, "rootfs_data")))
        );
        assert_eq!(
            parse_flash_upper("mtd:rootfs_data"),
            Some(Ok(FlashSpec::Mtd {
                name: "rootfs_data".into()
            }))
        );
        // Block-device forms are not flash specs.
        for other in ["/dev/vdb", "LABEL=overlay", "tmpfs", "ubi0", "ubifs"] {
            assert_eq!(parse_flash_upper(other), None, "{other}");
        }
        for bad in [
            "ubi0:",
            "ubi:",
            "mtd:",
            "ubix:data",
            "ubi01:data",
            "ubi-1:data",
        ] {
            let e = parse_flash_upper(bad).unwrap().unwrap_err();
            assert!(e.starts_with(&format!("ovl.upper={bad}")), "{e}");
        }
        let long = format!("ubi0:{}", "v".repeat(128));
        assert!(parse_flash_upper(&long)
            .unwrap()
            .unwrap_err()
            .contains("127"));
        let just_fits = format!("ubi0:{}", "v".repeat(127));
        assert!(parse_flash_upper(&just_fits).unwrap().is_ok());
        // Printed back as given.
        for spec in ["ubi0:overlay", "ubi:data", "mtd:rootfs_data"] {
            assert_eq!(parse_flash_upper(spec).unwrap().unwrap().to_string(), spec);
        }
    }

    #[test]
    fn flash_specs_are_their_own_mount_sources() {
        let ubi = parse_flash_upper("ubi0:rootfs_data").unwrap().unwrap();
        assert_eq!(
            (ubi.fstype(), ubi.mount_source().as_str()),
            ("ubifs", "ubi0:rootfs_data")
        );
        let mtd = parse_flash_upper("mtd:rootfs_data").unwrap().unwrap();
        assert_eq!(
            (mtd.fstype(), mtd.mount_source().as_str()),
            ("jffs2", "mtd:rootfs_data")
        );
    }

    #[test]
    fn proc_mtd_is_read_and_searched() {
        let text = "dev:    size   erasesize  name\n\
                    mtd0: 00030000 00010000 \"u-boot\"\n\
                    mtd5: 00500000 00010000 \"rootfs data\"\n\
                    mtd12: 04000000 00020000 \"ubi\"\n";
        let parts = parse_proc_mtd(text).unwrap();
        assert_eq!(
            parts[1],
            MtdPartition {
                index: 5,
                size: 0x50_0000,
                erase_size: 0x1_0000,
                name: "rootfs data".into()
            }
        );
        assert_eq!(
            find_mtd(&parts, &UbiAttach::Name("ubi".into()))
                .unwrap()
                .index,
            12
        );
        assert_eq!(
            find_mtd(&parts, &UbiAttach::Number(0)).unwrap().name,
            "u-boot"
        );
        assert_eq!(find_mtd(&parts, &UbiAttach::Name("none".into())), None);
        assert_eq!(
            parse_proc_mtd("dev:    size   erasesize  name\n"),
            Ok(vec![])
        );
        for bad in [
            "mtdx: 1 2 \"a\"",
            "mtd1: zz 2 \"a\"",
            "mtd1: 1 2 a",
            "mtd1 1 2 \"a\"",
        ] {
            assert!(
                parse_proc_mtd(bad).unwrap_err().contains("/proc/mtd"),
                "{bad}"
            );
        }
    }

    #[test]
    fn ubiattach_by_name_or_number() {
        assert_eq!(
            parse_ubiattach(Some("mtd:ubi")),
            Ok(UbiAttach::Name("ubi".into()))
        );
        assert_eq!(parse_ubiattach(Some("mtd3")), Ok(UbiAttach::Number(3)));
        assert_eq!(parse_ubiattach(Some("0")), Ok(UbiAttach::Number(0)));
        for bad in [
            None,
            Some(""),
            Some("mtd:"),
            Some("mtdx"),
            Some("-1"),
            Some("ubi0"),
        ] {
            let e = parse_ubiattach(bad).unwrap_err();
            assert!(e.starts_with("ovl.ubiattach"), "{e}");
        }
    }
}
