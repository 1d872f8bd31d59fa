//! Firmware upgrades under a persistent upper: noticing that the lower was
//! replaced (its identity changed), and what to do then (`ovl.upgrade=`).
//! See docs/upgrades.md.
//!
//! - [`identity`]: what a lower is (UUID, metadata hash, os-release version)
//!   and its record in `.overlay-init/lower-identity`.
//! - [`keep`]: the keep-list a reset carries over.
//! - this module: the policy parser and the pure decision table.
//!
//! The kernel-facing parts are `sys::lower_identity` (computing an identity),
//! `sys::carry` (the keep-list's carry into a fresh upper) and
//! `sys::upgrade_scan` (shadowed entries, prune, the merged keep-list lookup).

pub mod identity;
pub mod keep;
pub mod sha256;

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fd::AsFd;

use identity::{IdentityRecord, Recorded, RECORD_NAME};

/// `ovl.upgrade=`: what happens when the lower's identity changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Use the upper as it is; warn and list what shadows the new lower.
    #[default]
    Keep,
    /// Remove upper entries identical to the new lower's and stale whiteouts;
    /// then as `keep`.
    Prune,
    /// A factory reset that carries the keep-list.
    Reset,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Keep, Policy::Prune, Policy::Reset];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Keep => "keep",
            Policy::Prune => "prune",
            Policy::Reset => "reset",
        }
    }
}

/// A bad `ovl.upgrade` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The value as given; `None` for a bare `ovl.upgrade`.
    pub value: Option<String>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "ovl.upgrade={v:?}: ")?,
            None => write!(f, "ovl.upgrade needs a value: ")?,
        }
        write!(f, "accepted: keep, prune, reset; using the default (keep)")
    }
}

impl std::error::Error for PolicyError {}

/// Parse the value of `ovl.upgrade` (ready for the cmdline table: the error
/// names the parameter and what is accepted; the default is safe).
pub fn parse_policy(value: Option<&str>) -> Result<Policy, PolicyError> {
    match value {
        Some("keep") => Ok(Policy::Keep),
        Some("prune") => Ok(Policy::Prune),
        Some("reset") => Ok(Policy::Reset),
        other => Err(PolicyError {
            value: other.map(str::to_string),
        }),
    }
}

/// How this boot's lowers relate to the recorded identity (the input of the
/// decision; [`identity::compare`] computes the detailed form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerState {
    /// No identity recorded yet.
    FirstBoot,
    /// The record exists but is unreadable (torn, edited, foreign).
    Unreadable,
    Unchanged,
    /// An upgrade or a rollback: any change of any layer.
    Changed,
}

impl LowerState {
    pub const ALL: [LowerState; 4] = [
        LowerState::FirstBoot,
        LowerState::Unreadable,
        LowerState::Unchanged,
        LowerState::Changed,
    ];
}

impl From<&identity::LowerChange> for LowerState {
    fn from(c: &identity::LowerChange) -> Self {
        match c {
            identity::LowerChange::FirstBoot => LowerState::FirstBoot,
            identity::LowerChange::Unknown(_) => LowerState::Unreadable,
            identity::LowerChange::Unchanged => LowerState::Unchanged,
            identity::LowerChange::Changed { .. } => LowerState::Changed,
        }
    }
}

/// What the upgrade step does to the upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing at all.
    Nothing,
    /// Warn and write `/run/overlay-init/shadowed`.
    ReportShadowed,
    /// Prune, then report as above.
    PruneAndReport,
    /// Request a reset (`requested-by=upgrade`) and let the reset machinery,
    /// with the keep-list, run it.
    ResetKeeping,
}

/// How loudly the boot says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// One debug line.
    Debug,
    Info,
    Warn,
}

/// The plan for one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    /// Write this boot's identity record, *after* the action is durable, so a
    /// power cut before it makes the next boot redo the (idempotent) action.
    pub record: bool,
    pub notice: Notice,
}

/// What else this boot does, from the reset machinery and the cmdline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootContext {
    /// `ovl.failsafe`: the persistent upper is not touched at all.
    pub failsafe: bool,
    /// A reset runs anyway (`ovl.reset` or a pending request); it carries the
    /// keep-list too, so an upgrade action on top would be redundant.
    pub reset_anyway: bool,
}

/// The decision table. Failsafe touches nothing; a reset that runs anyway
/// makes the upgrade action moot (the identity is still recorded); else
/// first boot and an unreadable record record the identity and change
/// nothing; an unchanged lower does nothing; a change applies the policy.
pub fn decide(state: LowerState, policy: Policy, ctx: BootContext) -> Plan {
    use Action::*;
    use LowerState::*;
    let plan = |action, record, notice| Plan {
        action,
        record,
        notice,
    };
    if ctx.failsafe {
        return plan(Nothing, false, Notice::Debug);
    }
    match (state, policy, ctx.reset_anyway) {
        (Unchanged, _, _) => plan(Nothing, false, Notice::Debug),
        (FirstBoot, _, _) => plan(Nothing, true, Notice::Info),
        (Unreadable, _, _) => plan(Nothing, true, Notice::Warn),
        (Changed, _, true) => plan(Nothing, true, Notice::Warn),
        (Changed, Policy::Keep, false) => plan(ReportShadowed, true, Notice::Warn),
        (Changed, Policy::Prune, false) => plan(PruneAndReport, true, Notice::Warn),
        (Changed, Policy::Reset, false) => plan(ResetKeeping, true, Notice::Warn),
    }
}

/// The warning of a boot whose lowers changed: which layers, old and new
/// identity and version, what the policy did, and how many upper entries
/// still shadow the new lowers (listed in `/run/overlay-init/shadowed`).
pub fn change_message(
    old: &IdentityRecord,
    new: &IdentityRecord,
    layers: &[String],
    policy: Policy,
    shadowed: usize,
) -> String {
    let done = match policy {
        Policy::Keep => "the upper is kept as it is",
        Policy::Prune => "copies identical to the new lower and stale whiteouts were pruned",
        Policy::Reset => "the upper is factory-reset, keeping the keep-list",
    };
    let mut m = format!(
        "the lower changed (an upgrade or a rollback): {}; ovl.upgrade={}: {done}",
        describe_change(old, new, layers),
        policy.name()
    );
    if policy != Policy::Reset {
        m.push_str(&format!(
            "; {shadowed} upper entries shadow a path of the new lower (list: {})",
            crate::layout::SHADOWED_FILE
        ));
    }
    m
}

/// `LAYER: OLD -> NEW` for each changed layer, `; `-separated.
pub fn describe_change(old: &IdentityRecord, new: &IdentityRecord, layers: &[String]) -> String {
    let layer = |rec: &IdentityRecord, name: &str| -> String {
        let id = match name {
            "main" => Some(&rec.main),
            other => other
                .strip_prefix("extra")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| rec.extra.get(n)),
        };
        id.map_or_else(|| "absent".to_string(), |id| id.describe())
    };
    let changes: Vec<String> = layers
        .iter()
        .map(|l| format!("{l}: {} -> {}", layer(old, l), layer(new, l)))
        .collect();
    changes.join("; ")
}

/// Read `.overlay-init/lower-identity` on the upper's filesystem.
pub fn read_record(upper_root: &Path) -> Result<Recorded> {
    let root = crate::sys::dirfd::open_dir(upper_root)?;
    let state = match crate::sys::dirfd::open_dir_at(root.as_fd(), c".overlay-init") {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(Recorded::Missing),
        Err(e) => {
            return Err(e).with_context(|| format!("open {}/.overlay-init", upper_root.display()))
        }
    };
    let name = std::ffi::CString::new(RECORD_NAME).expect("no NUL");
    let bytes = crate::sys::dirfd::read_small_file(state.as_fd(), &name)
        .with_context(|| format!("read {}/.overlay-init/{RECORD_NAME}", upper_root.display()))?;
    Ok(IdentityRecord::parse(bytes.as_deref()))
}

/// Write `.overlay-init/lower-identity` durably (temp file, fsync, rename,
/// fsync of the directory): a power cut leaves the old record or the new one.
pub fn write_record(upper_root: &Path, record: &IdentityRecord) -> Result<()> {
    let root = crate::sys::dirfd::open_dir(upper_root)?;
    let (state, created) = crate::sys::dirfd::ensure_dir_at(root.as_fd(), c".overlay-init", 0o755)?;
    if created {
        crate::sys::dirfd::fsync_dir(root.as_fd(), "upper root")?;
    }
    let name = std::ffi::CString::new(RECORD_NAME).expect("no NUL");
    crate::sys::dirfd::write_durably(state.as_fd(), &name, record.render().as_bytes())
        .with_context(|| format!("record the lower identity in {}", upper_root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parser_names_the_parameter() {
        assert_eq!(parse_policy(Some("keep")), Ok(Policy::Keep));
        assert_eq!(parse_policy(Some("prune")), Ok(Policy::Prune));
        assert_eq!(parse_policy(Some("reset")), Ok(Policy::Reset));
        let e = parse_policy(Some("wipe")).unwrap_err().to_string();
        assert!(
            e.contains("ovl.upgrade=\"wipe\"") && e.contains("keep, prune, reset"),
            "{e}"
        );
        let e = parse_policy(None).unwrap_err().to_string();
        assert!(e.starts_with("ovl.upgrade needs a value"), "{e}");
        assert_eq!(
            parse_policy(Some("KEEP")).unwrap_err().value.as_deref(),
            Some("KEEP")
        );
        assert_eq!(Policy::default(), Policy::Keep);
        for p in Policy::ALL {
            assert_eq!(parse_policy(Some(p.name())), Ok(p));
        }
    }

    #[test]
    fn ovl_upgrade_is_read_from_the_command_line() {
        let parsed = crate::cmdline::parse("root=/dev/vda ovl.upgrade=prune");
        assert_eq!(parsed.config.upgrade, Policy::Prune);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(
            crate::cmdline::parse("root=/dev/vda").config.upgrade,
            Policy::Keep
        );
        let bad = crate::cmdline::parse("root=/dev/vda ovl.upgrade=wipe ovl.upgrade");
        assert_eq!(bad.config.upgrade, Policy::Keep);
        assert_eq!(bad.problems.len(), 2, "{:?}", bad.problems);
        for p in &bad.problems {
            assert_eq!(p.param, "ovl.upgrade");
            assert!(!p.fatal);
            assert!(p.message.contains("keep, prune, reset"), "{}", p.message);
        }
    }

    #[test]
    fn change_message_names_both_versions() {
        let id = |v: &str, h: char| identity::LowerIdentity {
            fstype: "squashfs".into(),
            uuid: None,
            meta_sha256: h.to_string().repeat(64),
            meta_bytes: 1,
            version: identity::OsVersion {
                version_id: Some(v.into()),
                ..Default::default()
            },
        };
        let old = IdentityRecord {
            main: id("1", 'a'),
            extra: vec![],
        };
        let new = IdentityRecord {
            main: id("2", 'b'),
            extra: vec![id("x", 'c')],
        };
        let m = change_message(
            &old,
            &new,
            &["main".into(), "extra0".into()],
            Policy::Keep,
            3,
        );
        assert!(m.contains("main: squashfs 1 aaaa"), "{m}");
        assert!(m.contains("-> squashfs 2 bbbb"), "{m}");
        assert!(m.contains("extra0: absent -> squashfs x cccc"), "{m}");
        assert!(
            m.contains("ovl.upgrade=keep") && m.contains("3 upper entries"),
            "{m}"
        );
    }

    /// Every combination, written out: {first boot, unreadable, unchanged,
    /// changed} x {keep, prune, reset} x {plain, reset anyway, failsafe}.
    #[test]
    fn decision_table_is_exhaustive() {
        use Action::*;
        use LowerState::*;
        use Notice::*;
        const PLAIN: BootContext = BootContext {
            failsafe: false,
            reset_anyway: false,
        };
        const RESET: BootContext = BootContext {
            failsafe: false,
            reset_anyway: true,
        };
        let table: &[(LowerState, Policy, BootContext, Action, bool, Notice)] = &[
            (FirstBoot, Policy::Keep, PLAIN, Nothing, true, Info),
            (FirstBoot, Policy::Prune, PLAIN, Nothing, true, Info),
            (FirstBoot, Policy::Reset, PLAIN, Nothing, true, Info),
            (Unreadable, Policy::Keep, PLAIN, Nothing, true, Warn),
            (Unreadable, Policy::Prune, PLAIN, Nothing, true, Warn),
            (Unreadable, Policy::Reset, PLAIN, Nothing, true, Warn),
            (Unchanged, Policy::Keep, PLAIN, Nothing, false, Debug),
            (Unchanged, Policy::Prune, PLAIN, Nothing, false, Debug),
            (Unchanged, Policy::Reset, PLAIN, Nothing, false, Debug),
            (Changed, Policy::Keep, PLAIN, ReportShadowed, true, Warn),
            (Changed, Policy::Prune, PLAIN, PruneAndReport, true, Warn),
            (Changed, Policy::Reset, PLAIN, ResetKeeping, true, Warn),
            (FirstBoot, Policy::Reset, RESET, Nothing, true, Info),
            (Unreadable, Policy::Reset, RESET, Nothing, true, Warn),
            (Unchanged, Policy::Keep, RESET, Nothing, false, Debug),
            (Changed, Policy::Keep, RESET, Nothing, true, Warn),
            (Changed, Policy::Prune, RESET, Nothing, true, Warn),
            (Changed, Policy::Reset, RESET, Nothing, true, Warn),
        ];
        for &(state, policy, ctx, action, record, notice) in table {
            assert_eq!(
                decide(state, policy, ctx),
                Plan {
                    action,
                    record,
                    notice
                },
                "{state:?} {policy:?} {ctx:?}"
            );
        }
        // Every (state, policy) pair appears for a plain boot.
        for state in LowerState::ALL {
            for policy in Policy::ALL {
                assert!(table
                    .iter()
                    .any(|r| r.0 == state && r.1 == policy && r.2 == PLAIN));
                for reset_anyway in [false, true] {
                    let failsafe = BootContext {
                        failsafe: true,
                        reset_anyway,
                    };
                    assert_eq!(
                        decide(state, policy, failsafe),
                        Plan {
                            action: Nothing,
                            record: false,
                            notice: Debug
                        }
                    );
                }
            }
        }
    }
}
