//! Device specifications as they appear on the kernel command line
//! (`root=`, `ovl.upper=`, `ovl.lower=`): pure data, parsed and printed.

use std::fmt;

/// How the user named a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `/dev/NAME` (any absolute path under /dev).
    Path(String),
    /// `LABEL=` filesystem label.
    Label(String),
    /// `UUID=` filesystem UUID, stored lower-case.
    Uuid(String),
    /// `PARTUUID=` GPT partition GUID or MBR `SSSSSSSS-PP`, stored lower-case.
    PartUuid(String),
    /// `PARTLABEL=` GPT partition name.
    PartLabel(String),
}

impl DeviceSpec {
    /// Parse one device spec. The error says what forms are accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let nonempty = |kind: &str, v: &str| {
            if v.is_empty() {
                Err(format!("{kind}= needs a value"))
            } else {
                Ok(v.to_string())
            }
        };
        if let Some(v) = s.strip_prefix("LABEL=") {
            return nonempty("LABEL", v).map(DeviceSpec::Label);
        }
        if let Some(v) = s.strip_prefix("UUID=") {
            let v = nonempty("UUID", v)?;
            if !v.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(format!("UUID={v}: expected hex digits and dashes"));
            }
            return Ok(DeviceSpec::Uuid(v.to_ascii_lowercase()));
        }
        if let Some(v) = s.strip_prefix("PARTUUID=") {
            let v = nonempty("PARTUUID", v)?;
            if !v.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(format!(
                    "PARTUUID={v}: expected a GPT GUID or an MBR SSSSSSSS-PP"
                ));
            }
            return Ok(DeviceSpec::PartUuid(v.to_ascii_lowercase()));
        }
        if let Some(v) = s.strip_prefix("PARTLABEL=") {
            return nonempty("PARTLABEL", v).map(DeviceSpec::PartLabel);
        }
        if let Some(name) = s.strip_prefix("/dev/") {
            if name.is_empty() || name.contains("..") {
                return Err(format!("{s}: not a device path"));
            }
            return Ok(DeviceSpec::Path(s.to_string()));
        }
        Err(format!(
            "{s:?}: expected /dev/NAME, LABEL=, UUID=, PARTUUID= or PARTLABEL="
        ))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Path(p) => write!(f, "{p}"),
            DeviceSpec::Label(v) => write!(f, "LABEL={v}"),
            DeviceSpec::Uuid(v) => write!(f, "UUID={v}"),
            DeviceSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DeviceSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            DeviceSpec::parse("/dev/vda1"),
            Ok(DeviceSpec::Path("/dev/vda1".into()))
        );
        assert_eq!(
            DeviceSpec::parse("LABEL=rootfs_data"),
            Ok(DeviceSpec::Label("rootfs_data".into()))
        );
        assert_eq!(
            DeviceSpec::parse("UUID=ABCD-12"),
            Ok(DeviceSpec::Uuid("abcd-12".into()))
        );
        assert_eq!(
            DeviceSpec::parse("PARTUUID=0badcafe-02"),
            Ok(DeviceSpec::PartUuid("0badcafe-02".into()))
        );
        assert_eq!(
            DeviceSpec::parse("PARTLABEL=rootfs"),
            Ok(DeviceSpec::PartLabel("rootfs".into()))
        );
    }

    #[test]
    fn rejects_bad_specs_with_reason() {
        for bad in [
            "vda",
            "LABEL=",
            "UUID=xyz",
            "/dev/",
            "/dev/../etc",
            "PARTUUID=g",
        ] {
            let err = DeviceSpec::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "/dev/sda",
            "LABEL=x",
            "UUID=ab-cd",
            "PARTUUID=12-01",
            "PARTLABEL=p",
        ] {
            assert_eq!(DeviceSpec::parse(s).unwrap().to_string(), s);
        }
    }
}
