//! Failsafe: when a boot uses a fresh tmpfs upper and leaves the persistent
//! upper read-only at `/overlay`, and why. Pure decisions; the key window's
//! console I/O is `sys::console_key`, the counter's disk I/O is `bootcount`.

use std::fmt;
use std::time::Duration;

use crate::cmdline::Config;

/// The prompt shown during the key window (OpenWrt's convention).
pub const KEY_PROMPT: &str = "press f and Enter for failsafe";

/// Why this boot is a failsafe boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `ovl.failsafe` on the command line.
    Parameter,
    /// `f` + Enter typed on the console during the key window.
    Key,
    /// `attempts` boots started without `overlay-init mark-good`, `maxtries` allowed.
    BootLoop { attempts: u32, maxtries: u32 },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Parameter => write!(f, "ovl.failsafe on the kernel command line"),
            Reason::Key => write!(f, "failsafe key pressed on the console"),
            Reason::BootLoop { attempts, maxtries } => write!(
                f,
                "{attempts} boots without `overlay-init mark-good` (ovl.maxtries={maxtries})"
            ),
        }
    }
}

/// The key window to open, if any: only with `ovl.failsafe_wait=N` (N > 0), a
/// console to read from, and no failsafe already asked for by parameter.
pub fn key_window(config: &Config, console_attached: bool) -> Option<Duration> {
    if config.failsafe || config.failsafe_wait == 0 || !console_attached {
        return None;
    }
    Some(Duration::from_secs(config.failsafe_wait.into()))
}

/// Does a line typed on the console ask for failsafe? `f` or `F`, surrounding
/// blanks and the line ending ignored.
pub fn is_failsafe_key(line: &[u8]) -> bool {
    matches!(line.trim_ascii(), b"f" | b"F")
}

/// Failsafe asked for before any device is touched: by parameter, or by key.
pub fn early_reason(config: &Config, key_pressed: bool) -> Option<Reason> {
    if config.failsafe {
        Some(Reason::Parameter)
    } else if key_pressed {
        Some(Reason::Key)
    } else {
        None
    }
}

/// Failsafe because of the boot-attempt counter read from the persistent upper:
/// `attempts` boots have started since the last `mark-good`. `maxtries == 0` is off.
pub fn boot_loop_reason(attempts: u32, maxtries: u32) -> Option<Reason> {
    (maxtries > 0 && attempts >= maxtries).then_some(Reason::BootLoop { attempts, maxtries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::parse;

    fn config(cmdline: &str) -> Config {
        let parsed = parse(cmdline);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        parsed.config
    }

    #[test]
    fn key_window_only_when_asked_and_a_console_is_there() {
        assert_eq!(key_window(&config(""), true), None);
        assert_eq!(
            key_window(&config("ovl.failsafe_wait=3"), true),
            Some(Duration::from_secs(3))
        );
        assert_eq!(key_window(&config("ovl.failsafe_wait=3"), false), None);
        assert_eq!(key_window(&config("ovl.failsafe_wait=0"), true), None);
        // Already failsafe: nothing to ask.
        assert_eq!(
            key_window(&config("ovl.failsafe ovl.failsafe_wait=3"), true),
            None
        );
    }

    #[test]
    fn only_f_and_enter_counts() {
        for yes in [&b"f\n"[..], b"F\r\n", b"  f  \n", b"f"] {
            assert!(is_failsafe_key(yes), "{yes:?}");
        }
        for no in [&b"\n"[..], b"ff\n", b"fail\n", b"x\n", b"", b"\x1b[A\n"] {
            assert!(!is_failsafe_key(no), "{no:?}");
        }
    }

    #[test]
    fn parameter_wins_over_key() {
        assert_eq!(
            early_reason(&config("ovl.failsafe"), true),
            Some(Reason::Parameter)
        );
        assert_eq!(early_reason(&config(""), true), Some(Reason::Key));
        assert_eq!(early_reason(&config(""), false), None);
    }

    #[test]
    fn boot_loop_after_maxtries_attempts() {
        assert_eq!(boot_loop_reason(0, 3), None);
        assert_eq!(boot_loop_reason(2, 3), None);
        assert_eq!(
            boot_loop_reason(3, 3),
            Some(Reason::BootLoop {
                attempts: 3,
                maxtries: 3
            })
        );
        assert!(boot_loop_reason(7, 3).is_some());
        // 0 = off, however many attempts.
        assert_eq!(boot_loop_reason(100, 0), None);
        assert!(boot_loop_reason(1, 1).is_some());
    }

    #[test]
    fn reasons_say_why() {
        let r = Reason::BootLoop {
            attempts: 3,
            maxtries: 3,
        };
        let text = r.to_string();
        assert!(text.contains("mark-good") && text.contains("ovl.maxtries=3"));
        assert!(Reason::Parameter.to_string().contains("ovl.failsafe"));
    }
}
