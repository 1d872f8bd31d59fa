//! What this boot did, for `overlay-init status`: written by PID 1 to
//! `/run/overlay-init/state` before the handover (`/run` moves into the new
//! root), read by the CLI.
//!
//! Format: `key=value` lines, values on one line (newlines become spaces).
//! Unknown keys are ignored so an older CLI can read a newer file.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};

/// Where the boot leaves its state, as the running system sees it.
pub const STATE_PATH: &str = crate::layout::STATE_FILE;

/// Normal or failsafe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Normal,
    Failsafe,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Normal => "normal",
            Mode::Failsafe => "failsafe",
        })
    }
}

/// The boot's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootState {
    pub mode: Mode,
    /// Why failsafe (empty in a normal boot).
    pub failsafe_reason: Option<String>,
    /// The persistent upper device, when one was named and found.
    pub upper_device: Option<String>,
    /// What holds the overlay's changes: `tmpfs` or the device.
    pub upper: String,
    /// Why a persistent upper was not used and a tmpfs took its place.
    pub tmpfs_fallback: Option<String>,
    /// Boot attempts since the last `mark-good`, after this boot's increment.
    pub boot_attempts: Option<u32>,
    /// `ovl.maxtries` (0 = off).
    pub maxtries: u32,
    /// The root hash the main lower was verified with (`ovl.verity=`).
    pub verity: Option<String>,
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

impl BootState {
    /// The file's contents.
    pub fn render(&self) -> String {
        let mut out = format!("mode={}\n", self.mode);
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push('=');
            out.push_str(&one_line(value));
            out.push('\n');
        };
        if let Some(r) = &self.failsafe_reason {
            line("failsafe_reason", r);
        }
        line("upper", &self.upper);
        if let Some(d) = &self.upper_device {
            line("upper_device", d);
        }
        if let Some(r) = &self.tmpfs_fallback {
            line("tmpfs_fallback", r);
        }
        if let Some(n) = self.boot_attempts {
            line("boot_attempts", &n.to_string());
        }
        line("maxtries", &self.maxtries.to_string());
        if let Some(h) = &self.verity {
            line("verity", h);
        }
        out
    }

    /// Parse the file's contents; unknown keys and malformed lines are skipped.
    pub fn parse(text: &str) -> BootState {
        let mut state = BootState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.to_string();
            match key {
                "mode" if value == "failsafe" => state.mode = Mode::Failsafe,
                "mode" => state.mode = Mode::Normal,
                "failsafe_reason" => state.failsafe_reason = Some(value),
                "upper" => state.upper = value,
                "upper_device" => state.upper_device = Some(value),
                "tmpfs_fallback" => state.tmpfs_fallback = Some(value),
                "boot_attempts" => state.boot_attempts = value.parse().ok(),
                "maxtries" => state.maxtries = value.parse().unwrap_or_default(),
                "verity" => state.verity = Some(value),
                _ => {}
            }
        }
        state
    }

    /// Human-readable lines for `overlay-init status`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match (self.mode, &self.failsafe_reason) {
            (Mode::Failsafe, Some(why)) => lines.push(format!("mode: failsafe ({why})")),
            (mode, _) => lines.push(format!("mode: {mode}")),
        }
        if self.mode == Mode::Failsafe {
            lines.push(
                "changes are kept in a tmpfs and lost at reboot; the persistent upper is \
                 read-only at /overlay"
                    .into(),
            );
        }
        lines.push(match &self.verity {
            Some(h) => format!("lower: verified by dm-verity, root hash {h}"),
            None => "lower: not verified (no ovl.verity=)".into(),
        });
        lines.push(format!("upper: {}", self.upper));
        if let Some(why) = &self.tmpfs_fallback {
            lines.push(format!("tmpfs fallback: {why}"));
        }
        match (self.boot_attempts, self.maxtries) {
            (_, 0) => lines.push("boot counter: off (ovl.maxtries=0)".into()),
            (Some(n), max) => lines.push(format!(
                "boot attempts since mark-good: {n} of {max} before failsafe"
            )),
            (None, _) => {}
        }
        lines
    }
}

/// The lower's identity and the upgrade handling, for `overlay-init status`:
/// written by the "upgrade" step to `/run/overlay-init/upgrade` (same
/// `key=value` format, own file so it does not depend on when the boot state
/// is written). `last_upgrade`, `upgrade_policy` and `upgrade_result` also
/// persist in `.overlay-init/last-upgrade` on the upper, so a later boot
/// still reports the last upgrade seen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpgradeState {
    /// The main lower's identity (`squashfs 2 (build x) 1a2b...`).
    pub lower_identity: Option<String>,
    /// Its os-release version (`IMAGE_VERSION`, else `VERSION_ID`; `BUILD_ID`).
    pub lower_version: Option<String>,
    /// The last change seen: `LAYER: OLD -> NEW[; ...]`.
    pub last_upgrade: Option<String>,
    /// The `ovl.upgrade=` policy applied to it.
    pub upgrade_policy: Option<String>,
    /// What it did, in a few words.
    pub upgrade_result: Option<String>,
    /// The change was seen by this boot (not an earlier one).
    pub this_boot: bool,
}

impl UpgradeState {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (key, value) in [
            ("lower_identity", &self.lower_identity),
            ("lower_version", &self.lower_version),
            ("last_upgrade", &self.last_upgrade),
            ("upgrade_policy", &self.upgrade_policy),
            ("upgrade_result", &self.upgrade_result),
        ] {
            if let Some(v) = value {
                out.push_str(&format!("{key}={}\n", one_line(v)));
            }
        }
        if self.this_boot {
            out.push_str("upgrade_this_boot=1\n");
        }
        out
    }

    /// Unknown keys and malformed lines are skipped.
    pub fn parse(text: &str) -> UpgradeState {
        let mut s = UpgradeState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let v = Some(value.to_string());
            match key {
                "lower_identity" => s.lower_identity = v,
                "lower_version" => s.lower_version = v,
                "last_upgrade" => s.last_upgrade = v,
                "upgrade_policy" => s.upgrade_policy = v,
                "upgrade_result" => s.upgrade_result = v,
                "upgrade_this_boot" => s.this_boot = value == "1",
                _ => {}
            }
        }
        s
    }

    /// Lines for `overlay-init status`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(id) = &self.lower_identity {
            lines.push(format!("lower: {id}"));
        }
        if let Some(v) = &self.lower_version {
            lines.push(format!("lower version: {v}"));
        }
        match &self.last_upgrade {
            Some(change) => {
                let when = if self.this_boot {
                    "at this boot"
                } else {
                    "at an earlier boot"
                };
                lines.push(format!("last upgrade: {change} ({when})"));
                let policy = self.upgrade_policy.as_deref().unwrap_or("unknown");
                let result = self.upgrade_result.as_deref().unwrap_or("");
                lines.push(format!("upgrade policy applied: {policy}: {result}"));
            }
            None => lines.push("last upgrade: none seen".into()),
        }
        lines
    }
}

/// Write the upgrade state file (creating its directory).
pub fn write_upgrade(path: &Path, state: &UpgradeState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, state.render()).with_context(|| format!("write {}", path.display()))
}

/// Read the upgrade state file; `None` when the boot wrote none (a tmpfs upper).
pub fn read_upgrade(path: &Path) -> Result<Option<UpgradeState>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(UpgradeState::parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Write the state file (creating its directory).
pub fn write(path: &Path, state: &BootState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, state.render()).with_context(|| format!("write {}", path.display()))
}

/// Read the state file; `None` when the system was not booted by overlay-init.
pub fn read(path: &Path) -> Result<Option<BootState>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(BootState::parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failsafe() -> BootState {
        BootState {
            mode: Mode::Failsafe,
            failsafe_reason: Some("3 boots without mark-good\n(ovl.maxtries=3)".into()),
            upper_device: Some("/dev/vdb".into()),
            upper: "tmpfs".into(),
            tmpfs_fallback: None,
            boot_attempts: Some(3),
            maxtries: 3,
            verity: Some("4392712ba01368ef".into()),
        }
    }

    #[test]
    fn round_trip_and_one_line_values() {
        let s = failsafe();
        let text = s.render();
        assert!(text.starts_with("mode=failsafe\n"), "{text}");
        assert_eq!(text.lines().count(), 7, "{text}");
        let back = BootState::parse(&text);
        assert_eq!(back.mode, Mode::Failsafe);
        assert_eq!(
            back.failsafe_reason.as_deref(),
            Some("3 boots without mark-good (ovl.maxtries=3)")
        );
        assert_eq!(back.upper_device.as_deref(), Some("/dev/vdb"));
        assert_eq!(back.boot_attempts, Some(3));
        assert_eq!(back.verity.as_deref(), Some("4392712ba01368ef"));
        let normal = BootState {
            upper: "/dev/vdb".into(),
            tmpfs_fallback: None,
            maxtries: 3,
            boot_attempts: Some(1),
            ..Default::default()
        };
        assert_eq!(BootState::parse(&normal.render()), normal);
    }

    #[test]
    fn unknown_and_malformed_lines_are_skipped() {
        let s = BootState::parse("future=1\nnonsense\nmode=failsafe\nupper=tmpfs\n");
        assert_eq!(s.mode, Mode::Failsafe);
        assert_eq!(s.upper, "tmpfs");
    }

    #[test]
    fn status_says_failsafe_and_why() {
        let lines = failsafe().describe();
        assert!(lines[0].starts_with("mode: failsafe (3 boots"), "{lines:?}");
        assert!(lines
            .iter()
            .any(|l| l == "lower: verified by dm-verity, root hash 4392712ba01368ef"));
        let fallback = BootState {
            upper: "tmpfs".into(),
            upper_device: Some("/dev/vdb".into()),
            tmpfs_fallback: Some("/dev/vdb: no filesystem".into()),
            maxtries: 0,
            ..Default::default()
        };
        let lines = fallback.describe();
        assert_eq!(lines[0], "mode: normal");
        assert!(lines.iter().any(|l| l.starts_with("lower: not verified")));
        assert!(lines
            .iter()
            .any(|l| l == "tmpfs fallback: /dev/vdb: no filesystem"));
        assert!(lines.iter().any(|l| l.contains("off")));
    }

    #[test]
    fn upgrade_state_round_trips_and_describes() {
        let u = UpgradeState {
            lower_identity: Some("squashfs 2 abcd".into()),
            lower_version: Some("2".into()),
            last_upgrade: Some("main: squashfs 1 aaaa\n-> squashfs 2 abcd".into()),
            upgrade_policy: Some("keep".into()),
            upgrade_result: Some("3 shadowed".into()),
            this_boot: true,
        };
        let back = UpgradeState::parse(&u.render());
        assert_eq!(
            back.last_upgrade.as_deref(),
            Some("main: squashfs 1 aaaa -> squashfs 2 abcd")
        );
        assert!(back.this_boot);
        let lines = back.describe();
        assert_eq!(lines[0], "lower: squashfs 2 abcd");
        assert!(lines[2].ends_with("(at this boot)"), "{lines:?}");
        assert_eq!(lines[3], "upgrade policy applied: keep: 3 shadowed");
        let none = UpgradeState::parse("future=1\nlower_version=1\n").describe();
        assert_eq!(none, ["lower version: 1", "last upgrade: none seen"]);
    }

    #[test]
    fn write_then_read() {
        let dir = std::env::temp_dir().join(format!("ovl-state-{}", std::process::id()));
        let path = dir.join("overlay-init/state");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, &failsafe()).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().mode, Mode::Failsafe);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
