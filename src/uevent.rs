//! Kernel uevents as plain data.
//!
//! Two sources speak the same `KEY=VALUE` language: the datagrams the kernel
//! multicasts on `NETLINK_KOBJECT_UEVENT` (`ACTION@DEVPATH\0KEY=VALUE\0...`)
//! and the `uevent` files in sysfs (`KEY=VALUE\n...`, no header). Both parse
//! into a [`Uevent`]. The parsers are total: any bytes give a value or an
//! error, never a panic.

use std::fmt;

/// What happened to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
    Change,
    Move,
    Online,
    Offline,
    Bind,
    Unbind,
    /// An action this kernel knows and we do not; kept for the log.
    Other(String),
}

impl Action {
    pub fn parse(s: &str) -> Action {
        match s {
            "add" => Action::Add,
            "remove" => Action::Remove,
            "change" => Action::Change,
            "move" => Action::Move,
            "online" => Action::Online,
            "offline" => Action::Offline,
            "bind" => Action::Bind,
            "unbind" => Action::Unbind,
            other => Action::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Change => "change",
            Action::Move => "move",
            Action::Online => "online",
            Action::Offline => "offline",
            Action::Bind => "bind",
            Action::Unbind => "unbind",
            Action::Other(s) => s,
        })
    }
}

/// One uevent: the fields overlay-init uses, typed; numbers that do not parse
/// are `None` rather than an error (the kernel never sends them, and a device
/// we cannot describe is simply not matched).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uevent {
    pub action: Option<Action>,
    /// sysfs path below /sys, e.g. `/devices/virtual/block/loop0/loop0p1`.
    pub devpath: String,
    /// `SUBSYSTEM`, e.g. `block`.
    pub subsystem: Option<String>,
    /// `DEVNAME`, the node name below /dev, e.g. `vda1` or `mapper/x`.
    pub devname: Option<String>,
    /// `DEVTYPE`, e.g. `disk` or `partition`.
    pub devtype: Option<String>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `PARTN`: partition number, 1-based.
    pub partn: Option<u32>,
    /// `PARTNAME`: the partition's name when the kernel's table parser knows one.
    pub partname: Option<String>,
    /// `DISKSEQ`: the kernel's per-boot unique disk sequence number.
    pub diskseq: Option<u64>,
    pub seqnum: Option<u64>,
}

impl Uevent {
    /// `/dev/` + DEVNAME, when the event names a device node.
    pub fn dev_path(&self) -> Option<String> {
        self.devname.as_ref().map(|n| format!("/dev/{n}"))
    }

    pub fn is_block(&self) -> bool {
        self.subsystem.as_deref() == Some("block")
    }

    pub fn is_partition(&self) -> bool {
        self.devtype.as_deref() == Some("partition")
    }

    /// The last component of DEVPATH: the kernel object's name (`loop0p1`).
    pub fn kobject_name(&self) -> &str {
        self.devpath.rsplit('/').next().unwrap_or("")
    }

    fn set(&mut self, key: &str, value: &str) {
        let text = || Some(value.to_string());
        match key {
            // The header already said these; the variables only fill a gap.
            "ACTION" if self.action.is_none() => self.action = Some(Action::parse(value)),
            "DEVPATH" if self.devpath.is_empty() => self.devpath = value.to_string(),
            "SUBSYSTEM" => self.subsystem = text(),
            "DEVNAME" => self.devname = text(),
            "DEVTYPE" => self.devtype = text(),
            "MAJOR" => self.major = value.parse().ok(),
            "MINOR" => self.minor = value.parse().ok(),
            "PARTN" => self.partn = value.parse().ok(),
            "PARTNAME" => self.partname = text(),
            "DISKSEQ" => self.diskseq = value.parse().ok(),
            "SEQNUM" => self.seqnum = value.parse().ok(),
            _ => {}
        }
    }
}

/// Why a datagram is not a kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UeventError {
    Empty,
    /// udevd's re-broadcast format (`libudev\0` + binary header); only the kernel's
    /// own messages are trusted.
    LibudevFormat,
    /// The first field is not `ACTION@DEVPATH`.
    BadHeader(String),
}

impl fmt::Display for UeventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UeventError::Empty => f.write_str("empty uevent message"),
            UeventError::LibudevFormat => {
                f.write_str("libudev-format message, not from the kernel")
            }
            UeventError::BadHeader(h) => write!(f, "uevent header {h:?} is not ACTION@DEVPATH"),
        }
    }
}

impl std::error::Error for UeventError {}

/// Longest header echoed back in an error, so garbage does not flood the log.
const MAX_HEADER_ECHO: usize = 64;

/// Parse one netlink datagram from the kernel: `ACTION@DEVPATH\0KEY=VALUE\0...`.
/// Fields without `=` are ignored; the header's action and devpath win over the
/// `ACTION=`/`DEVPATH=` variables.
pub fn parse_netlink(datagram: &[u8]) -> Result<Uevent, UeventError> {
    if datagram.starts_with(b"libudev\0") {
        return Err(UeventError::LibudevFormat);
    }
    let mut fields = datagram.split(|&b| b == 0);
    let header = fields.next().unwrap_or_default();
    if header.is_empty() {
        return Err(UeventError::Empty);
    }
    let header = String::from_utf8_lossy(header);
    let (action, devpath) = match header.split_once('@') {
        Some((a, p)) if !a.is_empty() && p.starts_with('/') => (a, p),
        _ => {
            let echo: String = header.chars().take(MAX_HEADER_ECHO).collect();
            return Err(UeventError::BadHeader(echo));
        }
    };
    let mut event = Uevent {
        action: Some(Action::parse(action)),
        devpath: devpath.to_string(),
        ..Uevent::default()
    };
    for field in fields {
        apply_field(&mut event, &String::from_utf8_lossy(field));
    }
    Ok(event)
}

/// Parse a sysfs `uevent` file (`KEY=VALUE` lines). It has no action and no
/// DEVPATH; the caller knows the path it read and passes it as `devpath`.
pub fn parse_sysfs(devpath: &str, text: &str) -> Uevent {
    let mut event = Uevent {
        devpath: devpath.to_string(),
        ..Uevent::default()
    };
    for line in text.lines() {
        apply_field(&mut event, line);
    }
    event
}

fn apply_field(event: &mut Uevent, field: &str) {
    if let Some((key, value)) = field.split_once('=') {
        event.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(p.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn parses_a_partition_add_from_the_kernel() {
        let msg = datagram(&[
            "add@/devices/virtual/block/loop0/loop0p1",
            "ACTION=add",
            "DEVPATH=/devices/virtual/block/loop0/loop0p1",
            "SUBSYSTEM=block",
            "MAJOR=259",
            "MINOR=0",
            "DEVNAME=loop0p1",
            "DEVTYPE=partition",
            "DISKSEQ=19",
            "PARTN=1",
            "PARTNAME=rootfs",
            "SEQNUM=4242",
        ]);
        let e = parse_netlink(&msg).unwrap();
        assert_eq!(e.action, Some(Action::Add));
        assert_eq!(e.devpath, "/devices/virtual/block/loop0/loop0p1");
        assert_eq!(e.subsystem.as_deref(), Some("block"));
        assert_eq!(e.devname.as_deref(), Some("loop0p1"));
        assert_eq!(e.dev_path().as_deref(), Some("/dev/loop0p1"));
        assert_eq!(e.devtype.as_deref(), Some("partition"));
        assert_eq!((e.major, e.minor), (Some(259), Some(0)));
        assert_eq!(e.partn, Some(1));
        assert_eq!(e.partname.as_deref(), Some("rootfs"));
        assert_eq!(e.diskseq, Some(19));
        assert_eq!(e.seqnum, Some(4242));
        assert!(e.is_block() && e.is_partition());
        assert_eq!(e.kobject_name(), "loop0p1");
    }

    #[test]
    fn parses_every_action_and_keeps_unknown_ones() {
        for a in [
            "add", "remove", "change", "move", "online", "offline", "bind", "unbind",
        ] {
            let e = parse_netlink(&datagram(&[&format!("{a}@/devices/x")])).unwrap();
            assert_eq!(e.action.unwrap().to_string(), a);
        }
        let e = parse_netlink(&datagram(&["frobnicate@/devices/x"])).unwrap();
        assert_eq!(e.action, Some(Action::Other("frobnicate".into())));
    }

    #[test]
    fn header_wins_over_variables() {
        let msg = datagram(&["remove@/devices/a", "ACTION=add", "DEVPATH=/devices/b"]);
        let e = parse_netlink(&msg).unwrap();
        assert_eq!(e.action, Some(Action::Remove));
        assert_eq!(e.devpath, "/devices/a");
    }

    #[test]
    fn message_without_trailing_nul_still_parses() {
        let e = parse_netlink(b"change@/devices/virtual/block/loop3\0SUBSYSTEM=block").unwrap();
        assert_eq!(e.subsystem.as_deref(), Some("block"));
    }

    #[test]
    fn rejects_libudev_messages() {
        let mut msg = b"libudev\0".to_vec();
        msg.extend_from_slice(&[0xfe, 0xed, 0xca, 0xfe, 40, 0, 0, 0]);
        assert_eq!(parse_netlink(&msg), Err(UeventError::LibudevFormat));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(parse_netlink(b""), Err(UeventError::Empty));
        assert_eq!(
            parse_netlink(b"\0SUBSYSTEM=block\0"),
            Err(UeventError::Empty)
        );
        for bad in [
            &b"add"[..],
            b"add@",
            b"@/devices/x",
            b"add@devices/x",
            b"\xff\xfe@\xff",
            b"add/devices/x\0MAJOR=8",
        ] {
            assert!(
                matches!(parse_netlink(bad), Err(UeventError::BadHeader(_))),
                "{bad:?}"
            );
        }
        // A long garbage header is echoed only in part.
        let long = vec![b'x'; 10_000];
        match parse_netlink(&long) {
            Err(UeventError::BadHeader(h)) => assert_eq!(h.len(), MAX_HEADER_ECHO),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_numbers_and_odd_fields_are_tolerated() {
        let msg = datagram(&[
            "add@/devices/x",
            "MAJOR=eight",
            "MINOR=-1",
            "PARTN=99999999999999",
            "NOEQUALS",
            "=value",
            "DEVNAME=a=b",
            "DEVNAME\u{0}",
            "\u{fffd}=\u{fffd}",
        ]);
        let e = parse_netlink(&msg).unwrap();
        assert_eq!((e.major, e.minor, e.partn), (None, None, None));
        assert_eq!(e.devname.as_deref(), Some("a=b"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::test_rng::XorShift::new(0x2545_f491_4f6c_dd1d);
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let state = rng.next();
                    // Bias towards the bytes that matter to the parser.
                    match state % 8 {
                        0 => 0,
                        1 => b'=',
                        2 => b'@',
                        3 => b'/',
                        _ => (state >> 8) as u8,
                    }
                })
                .collect();
            let _ = parse_netlink(&bytes);
            let _ = parse_sysfs("/devices/x", &String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn parses_a_sysfs_uevent_file() {
        let text = "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=1\nPARTNAME=rootfs_data\n";
        let e = parse_sysfs("/devices/pci0000:00/virtio1/block/vda/vda1", text);
        assert_eq!(e.action, None);
        assert_eq!(e.devpath, "/devices/pci0000:00/virtio1/block/vda/vda1");
        assert_eq!(e.devname.as_deref(), Some("vda1"));
        assert_eq!((e.major, e.minor), (Some(254), Some(1)));
        assert_eq!(e.partn, Some(1));
        assert_eq!(e.partname.as_deref(), Some("rootfs_data"));
        assert_eq!(e.diskseq, Some(9));
        // sysfs files do not carry SUBSYSTEM; the caller knows it walked /sys/class/block.
        assert_eq!(e.subsystem, None);
    }
}
