//! A `log::Log` that writes `<level>overlay-init: message` to `/dev/kmsg`. The
//! kernel echoes kmsg lines to the console by its own loglevel rule; warnings and
//! errors that it would not show (with `quiet`) are written to the console here,
//! so they are seen once, always. Informational lines respect `quiet`: they stay
//! in the kernel log (`dmesg`), and cost no slow serial-console output. Before
//! `/dev/kmsg` is open everything goes to the console.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Sinks {
    kmsg: Option<File>,
    /// The kernel prints kmsg lines below this level to the console itself.
    console_loglevel: u8,
}

pub struct KmsgLogger {
    sinks: Mutex<Sinks>,
    /// Prefix for console lines; kmsg lines carry the kernel's own timestamp.
    to_stderr_only: bool,
}

static LOGGER: KmsgLogger = KmsgLogger {
    sinks: Mutex::new(Sinks {
        kmsg: None,
        console_loglevel: 0,
    }),
    to_stderr_only: false,
};

static STDERR_LOGGER: KmsgLogger = KmsgLogger {
    sinks: Mutex::new(Sinks {
        kmsg: None,
        console_loglevel: 0,
    }),
    to_stderr_only: true,
};

/// The syslog priority the kernel expects in the `<N>` prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One kmsg record: `<N>overlay-init: message`, one line per record.
pub fn kmsg_line(level: Level, message: &str) -> String {
    let mut line = format!("<{}>overlay-init: ", syslog_priority(level));
    // Keep one record per line: kmsg would split embedded newlines unprefixed.
    line.push_str(&message.replace('\n', " | "));
    line.push('\n');
    line
}

/// Install the PID 1 logger (console only until [`attach_kmsg`]).
pub fn init_pid1(debug: bool) {
    let _ = log::set_logger(&LOGGER);
    set_debug(debug);
}

/// Install a plain stderr logger for the command-line tool.
pub fn init_cli(debug: bool) {
    let _ = log::set_logger(&STDERR_LOGGER);
    set_debug(debug);
}

pub fn set_debug(debug: bool) {
    log::set_max_level(if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
}

/// Start writing to `/dev/kmsg` (call once `/dev` and `/proc` are mounted).
pub fn attach_kmsg() {
    let kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
    let console_loglevel = std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    if let Ok(mut sinks) = LOGGER.sinks.lock() {
        sinks.kmsg = kmsg;
        sinks.console_loglevel = console_loglevel;
    }
}

impl Log for KmsgLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let level = record.level();
        let Ok(mut sinks) = self.sinks.lock() else {
            return;
        };
        let mut in_kmsg = false;
        if !self.to_stderr_only {
            if let Some(kmsg) = sinks.kmsg.as_mut() {
                in_kmsg = kmsg
                    .write_all(kmsg_line(level, &message).as_bytes())
                    .is_ok();
            }
        }
        if write_to_console(level, in_kmsg, sinks.console_loglevel) {
            let tag = match level {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            let _ = writeln!(std::io::stderr(), "overlay-init: {tag}{message}");
        }
    }

    fn flush(&self) {}
}

/// The console loglevel `quiet` sets (the kernel's `CONSOLE_LOGLEVEL_QUIET`).
pub const QUIET_LOGLEVEL: u8 = 4;

/// Whether a record must be written to the console by us: when it is not in
/// the kernel log at all; else when the kernel's console loglevel hides it and
/// it is a warning or an error, or the loglevel is above `quiet`'s (debug lines
/// of `ovl.debug` without `quiet`). With `quiet`, informational and debug lines
/// stay in the kernel log: no slow serial-console output on every boot. A
/// loglevel of 0 is unknown (`/proc/sys/kernel/printk` unreadable): written.
pub fn write_to_console(level: Level, in_kmsg: bool, console_loglevel: u8) -> bool {
    if !in_kmsg || console_loglevel == 0 {
        return true;
    }
    let shown_by_kernel = syslog_priority(level) < console_loglevel;
    !shown_by_kernel && (level <= Level::Warn || console_loglevel > QUIET_LOGLEVEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_lines_carry_priority_and_prefix() {
        assert_eq!(
            kmsg_line(Level::Error, "mount failed"),
            "<3>overlay-init: mount failed\n"
        );
        assert_eq!(kmsg_line(Level::Info, "a\nb"), "<6>overlay-init: a | b\n");
        assert_eq!(syslog_priority(Level::Warn), 4);
        assert_eq!(syslog_priority(Level::Debug), 7);
    }

    #[test]
    fn console_gets_what_the_kernel_hides_only_if_it_matters() {
        // No kmsg yet: everything goes to the console.
        assert!(write_to_console(Level::Info, false, 7));
        // Default loglevel 7: the kernel prints info, warnings, errors itself.
        for level in [Level::Error, Level::Warn, Level::Info] {
            assert!(!write_to_console(level, true, 7), "{level}");
        }
        // `quiet` (loglevel 4): warnings and errors are echoed, info stays in dmesg.
        assert!(write_to_console(Level::Warn, true, 4));
        assert!(!write_to_console(Level::Error, true, 4));
        assert!(write_to_console(Level::Error, true, 3));
        assert!(!write_to_console(Level::Info, true, 4));
        assert!(!write_to_console(Level::Debug, true, 4));
        // No `quiet` (loglevel 7): `ovl.debug`'s lines, which the kernel does not
        // show at that level, are written by us.
        assert!(write_to_console(Level::Debug, true, 7));
        // `loglevel=5`: info hidden by the kernel, not by `quiet`: written.
        assert!(write_to_console(Level::Info, true, 5));
        // Unknown loglevel: everything.
        assert!(write_to_console(Level::Info, true, 0));
    }
}
