//! `overlay-init status`: everything the running system can learn about this boot, gathered
//! from the boot's state file (`state::STATE_PATH`), the mount table (what is at `/overlay`
//! and `/rom`), the boot-attempt counter and the reset state on the upper. Pure: the CLI reads
//! the files and hands their contents in.
//!
//! `--json` prints [`Status::to_json`]: one JSON object whose schema is documented in
//! `overlay-init(8)` (section STATUS JSON). The contract: [`SCHEMA_VERSION`] changes only when
//! a field is removed or changes meaning; new fields may appear in the same version, so a
//! reader must ignore fields it does not know. Every field in [`FIELDS`] is always present
//! (`null` when unknown).

use std::fmt::Write as _;

use crate::mountinfo::parse_mountinfo;
use crate::state::{BootState, Mode};

/// Bumped only when a field is removed or changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Where the running system sees the main lower.
pub const ROM_DIR: &str = "/rom";

/// The JSON fields, in output order: the documented schema (`overlay-init(8)`) lists the same.
pub const FIELDS: &[&str] = &[
    "schema_version",
    "version",
    "mode",
    "failsafe_reason",
    "upper",
    "upper_device",
    "upper_fstype",
    "upper_read_only",
    "tmpfs_fallback",
    "overlay",
    "lower_device",
    "lower_fstype",
    "boot_attempts",
    "maxtries",
    "reset_pending",
    "reset_requested_by",
    "trash_generations",
];

/// One mount, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSummary {
    pub source: String,
    pub fstype: String,
    pub read_only: bool,
}

/// The mount at `path` in a mountinfo text (the last one: the one that is visible).
pub fn mount_at(mountinfo: &str, path: &str) -> Option<MountSummary> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .rev()
        .find(|entry| entry.mount_point == path)
        .map(|entry| MountSummary {
            read_only: entry.mount_options.split(',').any(|option| option == "ro"),
            source: entry.source,
            fstype: entry.fstype,
        })
}

/// Does this filesystem type live in memory (nothing on it survives a reboot)?
pub fn is_memory_fs(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "ramfs")
}

/// Everything `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// The boot's state; `None` with an explicit `--overlay` on a system not booted by
    /// overlay-init.
    pub state: Option<BootState>,
    /// The directory holding the upper's filesystem (`/overlay`).
    pub overlay: String,
    /// What is mounted there.
    pub upper_mount: Option<MountSummary>,
    /// What is mounted at `/rom`.
    pub lower_mount: Option<MountSummary>,
    /// The boot-attempt counter read from the upper now (0 after `mark-good`); `None` when
    /// the upper lives in memory (nothing is counted) or could not be read.
    pub boot_attempts: Option<u32>,
    pub reset: crate::reset::Status,
}

/// Should the counter on `overlay` be read? Not when the filesystem there lives in memory:
/// nothing is counted on a tmpfs upper.
pub fn counts_boots(upper_mount: Option<&MountSummary>) -> bool {
    !upper_mount.is_some_and(|mount| is_memory_fs(&mount.fstype))
}

impl Status {
    /// The JSON object (one line, then a newline): see the module documentation.
    pub fn to_json(&self) -> String {
        let state = self.state.as_ref();
        let mut json = JsonObject::default();
        json.number("schema_version", Some(SCHEMA_VERSION.into()));
        json.string("version", Some(env!("CARGO_PKG_VERSION")));
        json.string(
            "mode",
            state.map(|s| match s.mode {
                Mode::Normal => "normal",
                Mode::Failsafe => "failsafe",
            }),
        );
        json.string(
            "failsafe_reason",
            state.and_then(|s| s.failsafe_reason.as_deref()),
        );
        json.string(
            "upper",
            state.map(|s| s.upper.as_str()).filter(|u| !u.is_empty()),
        );
        json.string(
            "upper_device",
            state.and_then(|s| s.upper_device.as_deref()),
        );
        json.string(
            "upper_fstype",
            self.upper_mount.as_ref().map(|m| m.fstype.as_str()),
        );
        json.bool(
            "upper_read_only",
            self.upper_mount.as_ref().map(|m| m.read_only),
        );
        json.string(
            "tmpfs_fallback",
            state.and_then(|s| s.tmpfs_fallback.as_deref()),
        );
        json.string("overlay", Some(&self.overlay));
        json.string(
            "lower_device",
            self.lower_mount.as_ref().map(|m| m.source.as_str()),
        );
        json.string(
            "lower_fstype",
            self.lower_mount.as_ref().map(|m| m.fstype.as_str()),
        );
        json.number("boot_attempts", self.boot_attempts.map(u64::from));
        json.number("maxtries", state.map(|s| s.maxtries.into()));
        json.bool("reset_pending", Some(self.reset.reset_pending));
        json.string("reset_requested_by", self.reset.requested_by.as_deref());
        json.number(
            "trash_generations",
            Some(self.reset.trash_generations as u64),
        );
        json.finish()
    }

    /// The human-readable report, one `key: value` per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match &self.state {
            Some(state) => {
                // The counter as it is now (0 after `mark-good`), not at handover.
                let mut state = state.clone();
                if self.boot_attempts.is_some() {
                    state.boot_attempts = self.boot_attempts;
                }
                for line in state.describe() {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            None => out.push_str(&format!(
                "mode: unknown (no {}: not booted by overlay-init)\n",
                crate::state::STATE_PATH
            )),
        }
        let mount = |m: &MountSummary, at: &str| {
            format!(
                "{} ({}{} at {at})",
                m.source,
                m.fstype,
                if m.read_only { ", read-only" } else { "" }
            )
        };
        if let Some(m) = &self.lower_mount {
            let _ = writeln!(out, "lower: {}", mount(m, ROM_DIR));
        }
        match &self.upper_mount {
            Some(m) => {
                let _ = writeln!(out, "overlay: {}", mount(m, &self.overlay));
            }
            None => {
                let _ = writeln!(out, "overlay: {}", self.overlay);
            }
        }
        let reset = &self.reset;
        let _ = writeln!(
            out,
            "reset: {}",
            if reset.reset_pending {
                format!(
                    "pending (requested by {})",
                    reset.requested_by.as_deref().unwrap_or("unknown")
                )
            } else {
                "none pending".to_string()
            }
        );
        if reset.trash_generations > 0 {
            let _ = writeln!(
                out,
                "trash: {} old generation(s) still being removed",
                reset.trash_generations
            );
        }
        out
    }
}

/// A flat JSON object writer: string, number, boolean and null values only.
#[derive(Default)]
struct JsonObject {
    out: String,
}

impl JsonObject {
    fn key(&mut self, key: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        push_json_string(&mut self.out, key);
        self.out.push(':');
    }

    fn string(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => push_json_string(&mut self.out, v),
            None => self.out.push_str("null"),
        }
    }

    fn number(&mut self, key: &str, value: Option<u64>) {
        self.key(key);
        match value {
            Some(n) => {
                let _ = write!(self.out, "{n}");
            }
            None => self.out.push_str("null"),
        }
    }

    fn bool(&mut self, key: &str, value: Option<bool>) {
        self.key(key);
        self.out.push_str(match value {
            Some(true) => "true",
            Some(false) => "false",
            None => "null",
        });
    }

    fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push_str("}\n");
        self.out
    }
}

/// Append `s` as a JSON string (RFC 8259: `"` `\` and control characters escaped).
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/rom,upperdir=/overlay/upper
23 22 254:0 / /rom ro,relatime - squashfs /dev/vda ro,errors=continue
24 22 254:16 / /overlay rw,relatime - ext4 /dev/vdb rw
25 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw
";

    /// A minimal JSON reader for the tests: a flat object of strings, numbers, booleans and
    /// nulls, in order. Rejects anything else, so it also checks the output is valid JSON of
    /// that shape.
    fn parse_flat_json(text: &str) -> Vec<(String, String)> {
        let body = text
            .strip_suffix("}\n")
            .and_then(|t| t.strip_prefix('{'))
            .unwrap_or_else(|| panic!("not one object and a newline: {text:?}"));
        let mut fields = Vec::new();
        let mut chars = body.chars().peekable();
        let read_string = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            assert_eq!(chars.next(), Some('"'), "{text}");
            let mut s = String::new();
            loop {
                match chars.next().expect("unterminated string") {
                    '"' => return s,
                    '\\' => match chars.next().unwrap() {
                        'n' => s.push('\n'),
                        'r' => s.push('\r'),
                        't' => s.push('\t'),
                        '"' => s.push('"'),
                        '\\' => s.push('\\'),
                        'u' => {
                            let hex: String = chars.by_ref().take(4).collect();
                            s.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap())
                        }
                        other => panic!("bad escape \\{other}"),
                    },
                    c => {
                        assert!(c as u32 >= 0x20, "raw control character in {text:?}");
                        s.push(c)
                    }
                }
            }
        };
        while chars.peek().is_some() {
            let key = read_string(&mut chars);
            assert_eq!(chars.next(), Some(':'));
            let value = if chars.peek() == Some(&'"') {
                format!("s:{}", read_string(&mut chars))
            } else {
                let raw: String = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
                assert!(
                    raw == "null"
                        || raw == "true"
                        || raw == "false"
                        || (!raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit())),
                    "bad value {raw:?} for {key}"
                );
                raw
            };
            fields.push((key, value));
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        fields
    }

    fn get<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
        &fields.iter().find(|(k, _)| k == key).unwrap().1
    }

    fn normal() -> Status {
        Status {
            state: Some(BootState {
                upper: "/dev/vdb".into(),
                upper_device: Some("/dev/vdb".into()),
                boot_attempts: Some(1),
                maxtries: 3,
                ..Default::default()
            }),
            overlay: "/overlay".into(),
            upper_mount: mount_at(MOUNTINFO, "/overlay"),
            lower_mount: mount_at(MOUNTINFO, "/rom"),
            boot_attempts: Some(0),
            reset: crate::reset::Status {
                reset_pending: false,
                requested_by: None,
                trash_generations: 0,
            },
        }
    }

    #[test]
    fn json_has_every_documented_field_in_order() {
        let fields = parse_flat_json(&normal().to_json());
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, FIELDS);
        assert_eq!(get(&fields, "schema_version"), "1");
        assert_eq!(get(&fields, "mode"), "s:normal");
        assert_eq!(get(&fields, "failsafe_reason"), "null");
        assert_eq!(get(&fields, "upper"), "s:/dev/vdb");
        assert_eq!(get(&fields, "upper_fstype"), "s:ext4");
        assert_eq!(get(&fields, "upper_read_only"), "false");
        assert_eq!(get(&fields, "lower_device"), "s:/dev/vda");
        assert_eq!(get(&fields, "lower_fstype"), "s:squashfs");
        // The live counter, not the state file's count at handover.
        assert_eq!(get(&fields, "boot_attempts"), "0");
        assert_eq!(get(&fields, "maxtries"), "3");
        assert_eq!(get(&fields, "reset_pending"), "false");
        assert_eq!(get(&fields, "trash_generations"), "0");
    }

    #[test]
    fn json_failsafe_and_escaping() {
        let mut status = normal();
        let state = status.state.as_mut().unwrap();
        state.mode = Mode::Failsafe;
        state.failsafe_reason = Some("3 boots without `mark-good` \"x\"\\\n\u{1}".into());
        state.upper = "tmpfs".into();
        status.upper_mount = Some(MountSummary {
            source: "/dev/vdb".into(),
            fstype: "ext4".into(),
            read_only: true,
        });
        status.reset.reset_pending = true;
        status.reset.requested_by = Some("cli".into());
        let text = status.to_json();
        assert_eq!(text.lines().count(), 1, "{text}");
        let fields = parse_flat_json(&text);
        assert_eq!(get(&fields, "mode"), "s:failsafe");
        assert_eq!(
            get(&fields, "failsafe_reason"),
            "s:3 boots without `mark-good` \"x\"\\\n\u{1}"
        );
        assert_eq!(get(&fields, "upper"), "s:tmpfs");
        assert_eq!(get(&fields, "upper_read_only"), "true");
        assert_eq!(get(&fields, "reset_pending"), "true");
        assert_eq!(get(&fields, "reset_requested_by"), "s:cli");
    }

    #[test]
    fn json_without_state_or_mounts_is_all_null_but_present() {
        let status = Status {
            overlay: "/mnt/upper".into(),
            ..Default::default()
        };
        let fields = parse_flat_json(&status.to_json());
        assert_eq!(fields.len(), FIELDS.len());
        for key in ["mode", "upper", "lower_device", "boot_attempts", "maxtries"] {
            assert_eq!(get(&fields, key), "null", "{key}");
        }
        assert_eq!(get(&fields, "overlay"), "s:/mnt/upper");
    }

    #[test]
    fn mounts_are_read_from_mountinfo() {
        assert_eq!(
            mount_at(MOUNTINFO, "/rom"),
            Some(MountSummary {
                source: "/dev/vda".into(),
                fstype: "squashfs".into(),
                read_only: true
            })
        );
        assert_eq!(mount_at(MOUNTINFO, "/nowhere"), None);
        // The last mount on a path is the visible one.
        let stacked = format!("{MOUNTINFO}30 24 0:40 / /overlay rw - tmpfs tmpfs rw\n");
        assert_eq!(mount_at(&stacked, "/overlay").unwrap().fstype, "tmpfs");
        assert!(!counts_boots(mount_at(&stacked, "/overlay").as_ref()));
        assert!(counts_boots(mount_at(MOUNTINFO, "/overlay").as_ref()));
        assert!(counts_boots(None));
    }

    #[test]
    fn text_keeps_the_established_lines() {
        let text = normal().to_text();
        assert!(text.starts_with("mode: normal\n"), "{text}");
        assert!(
            text.contains("lower: /dev/vda (squashfs, read-only at /rom)\n"),
            "{text}"
        );
        assert!(
            text.contains("overlay: /dev/vdb (ext4 at /overlay)\n"),
            "{text}"
        );
        assert!(text.contains("reset: none pending\n"), "{text}");
        assert!(
            text.contains("boot attempts since mark-good: 0 of 3"),
            "{text}"
        );
    }
}
