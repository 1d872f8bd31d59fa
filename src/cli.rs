//! The command-line tool for the running system: `overlay-init status`, `reset`,
//! `mark-good`. It works on the upper's filesystem, which the new root sees at
//! `/overlay`. Its manual is `overlay-init(8)` (`man/overlay-init.8.scd`): the commands,
//! the exit codes below and the `status --json` schema (`crate::status`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the running system sees the upper's filesystem.
pub const OVERLAY_DIR: &str = crate::layout::OVERLAY;

/// Exit codes (documented in `overlay-init(8)`, EXIT STATUS).
pub const EXIT_OK: i32 = 0;
/// The command was understood but failed (the message says why).
pub const EXIT_FAILURE: i32 = 1;
/// Bad arguments (the message and the usage go to stderr).
pub const EXIT_USAGE: i32 = 2;
/// This system was not booted by overlay-init (no state file), so there is no
/// `/overlay` to work on.
pub const EXIT_NOT_BOOTED: i32 = 3;

pub const USAGE: &str = "\
usage: overlay-init [--overlay DIR] COMMAND [OPTIONS]

commands:
  status [--json]      this boot: mode (normal/failsafe and why), upper, lower,
                       boot attempts, pending reset; --json: one JSON object
                       (schema: man overlay-init, STATUS JSON)
  reset                ask for a factory reset at the next boot (keeps what
                       /etc/overlay-init/keep lists)
  reset --all          the same, keeping nothing
  reset --cancel       drop a pending reset request
  reset --finish       wait until the old upper of an earlier reset is removed
                       (it is removed in the background after the boot)
  mark-good            this boot worked: clear the boot-attempt counter
  mark-good --unless-failsafe
                       the same, but in a failsafe boot leave the counter and
                       succeed (what overlay-init-mark-good.service runs)
  help                 this text

options:
  --overlay DIR        the upper's filesystem (default /overlay); with it, the
                       commands also work on a system not booted by overlay-init
  -h, --help           this text
  --version            the version

exit status: 0 done, 1 failed, 2 bad arguments,
             3 this system was not booted by overlay-init
";

/// Parsed command line of the tool.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Status {
        json: bool,
    },
    Reset {
        cancel: bool,
    },
    FinishReset,
    /// `reset --all`: a reset that ignores the keep-list.
    ResetAll,
    MarkGood {
        unless_failsafe: bool,
    },
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub overlay: PathBuf,
    /// `--overlay` was given: work on that directory even without a state file.
    pub overlay_given: bool,
}

/// Parse the tool's arguments; `Err` is a message for the user (exit status 2).
/// `-h`/`--help` and `--version` win wherever they appear, as with systemctl.
pub fn parse_args(args: &[String]) -> Result<Invocation, String> {
    let mut overlay = PathBuf::from(OVERLAY_DIR);
    let mut overlay_given = false;
    let mut words = Vec::new();
    let mut help = false;
    let mut version = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--overlay" => {
                let dir = iter.next().ok_or("--overlay needs a directory")?;
                if dir.is_empty() {
                    return Err("--overlay needs a directory".into());
                }
                overlay = dir.into();
                overlay_given = true;
            }
            "-h" | "--help" => help = true,
            "--version" => version = true,
            other => words.push(other),
        }
    }
    let command = if help {
        Command::Help
    } else if version {
        Command::Version
    } else {
        match words.as_slice() {
            ["status"] => Command::Status { json: false },
            ["status", "--json"] | ["--json", "status"] => Command::Status { json: true },
            ["reset"] => Command::Reset { cancel: false },
            ["reset", "--cancel"] | ["--cancel", "reset"] => Command::Reset { cancel: true },
            ["reset", "--finish"] | ["--finish", "reset"] => Command::FinishReset,
            ["reset", "--all"] | ["--all", "reset"] => Command::ResetAll,
            ["mark-good"] => Command::MarkGood {
                unless_failsafe: false,
            },
            ["mark-good", "--unless-failsafe"] | ["--unless-failsafe", "mark-good"] => {
                Command::MarkGood {
                    unless_failsafe: true,
                }
            }
            ["help"] => Command::Help,
            [] => return Err("no command given".into()),
            _ => return Err(format!("unknown arguments: {}", words.join(" "))),
        }
    };
    Ok(Invocation {
        command,
        overlay,
        overlay_given,
    })
}

/// The files the tool reads about the running system; tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct SystemPaths {
    pub state: PathBuf,
    pub mountinfo: PathBuf,
}

impl Default for SystemPaths {
    fn default() -> Self {
        SystemPaths {
            state: PathBuf::from(crate::state::STATE_PATH),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

/// The one line for a system that overlay-init did not boot.
pub fn not_booted_message(state: &Path) -> String {
    format!(
        "this system was not booted by overlay-init: no {}",
        state.display()
    )
}

/// Run the tool; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    crate::logger::init_cli(false);
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    run_with(
        args,
        &SystemPaths::default(),
        &mut stdout.lock(),
        &mut stderr.lock(),
    )
}

/// [`run`] with the system's files and the output streams given.
pub fn run_with(
    args: &[String],
    paths: &SystemPaths,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let inv = match parse_args(args) {
        Ok(inv) => inv,
        Err(msg) => {
            let _ = write!(err, "overlay-init: {msg}\n\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    match execute(&inv, paths, out, err) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "overlay-init: {}", error_chain(&e));
            EXIT_FAILURE
        }
    }
}

/// An error and its causes on one line, `: `-separated, leaving out a cause whose text the
/// line already holds (a context that quotes its cause would otherwise say it twice).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn execute(
    inv: &Invocation,
    paths: &SystemPaths,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    let overlay = inv.overlay.as_path();
    match inv.command {
        Command::Help => {
            write!(out, "{USAGE}")?;
            return Ok(EXIT_OK);
        }
        Command::Version => {
            writeln!(out, "overlay-init {}", env!("CARGO_PKG_VERSION"))?;
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    let state = crate::state::read(&paths.state)?;
    if state.is_none() && !inv.overlay_given {
        writeln!(err, "overlay-init: {}", not_booted_message(&paths.state))?;
        return Ok(EXIT_NOT_BOOTED);
    }
    match inv.command {
        Command::Help | Command::Version => unreachable!("handled above"),
        Command::Status { json } => {
            let status = gather_status(state, overlay, paths)?;
            if json {
                write!(out, "{}", status.to_json())?;
            } else {
                write!(out, "{}", status.to_text())?;
            }
            if !json {
                let upgrade = Path::new(crate::layout::UPGRADE_STATE_FILE);
                if let Some(u) = crate::state::read_upgrade(upgrade)? {
                    for line in u.describe() {
                        writeln!(out, "{line}")?;
                    }
                }
            }
        }
        Command::Reset { cancel: false } => {
            crate::reset::request(overlay)?;
            writeln!(
                out,
                "factory reset requested: the next boot starts from the factory state \
                 (cancel with: overlay-init reset --cancel)"
            )?;
        }
        Command::ResetAll => {
            crate::reset::request_as(overlay, "cli", true)?;
            writeln!(
                out,
                "factory reset requested, keeping nothing (not even the keep-list): the next \
                 boot starts from the factory state (cancel with: overlay-init reset --cancel)"
            )?;
        }
        Command::Reset { cancel: true } => {
            if crate::reset::cancel(overlay)? {
                writeln!(out, "reset request cancelled")?;
            } else {
                writeln!(out, "no reset was pending")?;
            }
        }
        Command::FinishReset => {
            let report = crate::reset::finish_trash_removal(overlay)?;
            for failure in &report.failures {
                writeln!(err, "overlay-init: could not remove {failure}")?;
            }
            writeln!(
                out,
                "old upper generations removed ({} entries{})",
                report.removed,
                if report.mount_points_left.is_empty() {
                    String::new()
                } else {
                    format!(", {} mount points left", report.mount_points_left.len())
                }
            )?;
            if let Some(stopped) = &report.stopped {
                anyhow::bail!("stopped at a filesystem-wide error: {stopped}");
            }
            if report.failure_count > 0 {
                anyhow::bail!("{} entries could not be removed", report.failure_count);
            }
        }
        Command::MarkGood { unless_failsafe } => {
            let failsafe = state
                .as_ref()
                .filter(|s| s.mode == crate::state::Mode::Failsafe);
            match failsafe {
                Some(state) if unless_failsafe => writeln!(
                    out,
                    "failsafe boot ({}): the boot-attempt counter is left as it is",
                    state.failsafe_reason.as_deref().unwrap_or("reason unknown")
                )?,
                _ => {
                    let cleared = crate::bootcount::clear(overlay)?;
                    writeln!(
                        out,
                        "boot marked good: boot-attempt counter cleared (was {cleared})"
                    )?;
                }
            }
        }
    }
    Ok(EXIT_OK)
}

/// Read everything `status` shows.
fn gather_status(
    state: Option<crate::state::BootState>,
    overlay: &Path,
    paths: &SystemPaths,
) -> anyhow::Result<crate::status::Status> {
    use crate::status;
    // Without a mount table (an unusual chroot), the mounts are reported as unknown.
    let mountinfo = std::fs::read_to_string(&paths.mountinfo).unwrap_or_default();
    let overlay_text = overlay.to_string_lossy().into_owned();
    let upper_mount = status::mount_at(&mountinfo, &overlay_text);
    let lower_mount = state
        .as_ref()
        .and_then(|_| status::mount_at(&mountinfo, status::ROM_DIR));
    let boot_attempts = if status::counts_boots(upper_mount.as_ref()) {
        Some(crate::bootcount::read(overlay)?)
    } else {
        None
    };
    Ok(status::Status {
        state,
        overlay: overlay_text,
        upper_mount,
        lower_mount,
        boot_attempts,
        reset: crate::reset::status(overlay)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BootState, Mode};

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_args(&words("status")).unwrap().command,
            Command::Status { json: false }
        );
        assert_eq!(
            parse_args(&words("status --json")).unwrap().command,
            Command::Status { json: true }
        );
        assert_eq!(
            parse_args(&words("reset --cancel")).unwrap().command,
            Command::Reset { cancel: true }
        );
        let inv = parse_args(&words("reset --overlay /mnt/x")).unwrap();
        assert_eq!(inv.command, Command::Reset { cancel: false });
        assert_eq!(inv.overlay, PathBuf::from("/mnt/x"));
        assert!(inv.overlay_given);
        assert!(!parse_args(&words("status")).unwrap().overlay_given);
        assert_eq!(
            parse_args(&words("reset --finish")).unwrap().command,
            Command::FinishReset
        );
        assert_eq!(
            parse_args(&words("reset --all")).unwrap().command,
            Command::ResetAll
        );
        assert_eq!(
            parse_args(&words("mark-good")).unwrap().command,
            Command::MarkGood {
                unless_failsafe: false
            }
        );
        assert_eq!(
            parse_args(&words("mark-good --unless-failsafe"))
                .unwrap()
                .command,
            Command::MarkGood {
                unless_failsafe: true
            }
        );
        assert!(parse_args(&words("frobnicate")).is_err());
        assert!(parse_args(&words("status --overlay")).is_err());
        assert!(parse_args(&words("reset --json")).is_err());
        assert!(parse_args(&words("")).is_err());
    }

    #[test]
    fn help_and_version_everywhere() {
        for args in [
            "--help",
            "-h",
            "help",
            "status -h",
            "reset --cancel --help",
            "x -h",
        ] {
            assert_eq!(
                parse_args(&words(args)).unwrap().command,
                Command::Help,
                "{args}"
            );
        }
        for args in ["--version", "status --version", "mark-good --version"] {
            assert_eq!(
                parse_args(&words(args)).unwrap().command,
                Command::Version,
                "{args}"
            );
        }
    }

    /// A scratch directory with a state file, a mountinfo and an upper.
    struct Sandbox {
        dir: PathBuf,
        paths: SystemPaths,
    }

    impl Sandbox {
        fn new(name: &str) -> Sandbox {
            let dir = std::env::temp_dir().join(format!("ovl-cli-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("overlay")).unwrap();
            let paths = SystemPaths {
                state: dir.join("run/overlay-init/state"),
                mountinfo: dir.join("mountinfo"),
            };
            Sandbox { dir, paths }
        }

        fn overlay(&self) -> String {
            self.dir.join("overlay").display().to_string()
        }

        fn boot(&self, state: &BootState) {
            crate::state::write(&self.paths.state, state).unwrap();
            let mountinfo = format!(
                "23 22 254:0 / /rom ro,relatime - squashfs /dev/vda ro\n\
                 24 22 254:16 / {} rw,relatime - ext4 /dev/vdb rw\n",
                self.overlay()
            );
            std::fs::write(&self.paths.mountinfo, mountinfo).unwrap();
        }

        /// Run with `--overlay` pointing into the sandbox unless `args` says otherwise.
        fn run(&self, args: &str) -> (i32, String, String) {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let args: Vec<String> = args
                .replace("OVERLAY", &self.overlay())
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let code = run_with(&args, &self.paths, &mut out, &mut err);
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        }
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn not_booted_is_one_line_and_exit_3() {
        let sandbox = Sandbox::new("notbooted");
        for command in [
            "status",
            "status --json",
            "reset",
            "reset --cancel",
            "mark-good",
        ] {
            let (code, out, err) = sandbox.run(command);
            assert_eq!(code, EXIT_NOT_BOOTED, "{command}");
            assert_eq!(out, "", "{command}");
            assert_eq!(
                err,
                format!(
                    "overlay-init: this system was not booted by overlay-init: no {}\n",
                    sandbox.paths.state.display()
                ),
                "{command}"
            );
        }
        // An explicit --overlay works without a state file.
        let (code, out, err) = sandbox.run("--overlay OVERLAY status --json");
        assert_eq!((code, err.as_str()), (EXIT_OK, ""), "{out}");
        assert!(out.contains("\"mode\":null"), "{out}");
    }

    #[test]
    fn usage_errors_exit_2_once_with_usage() {
        let sandbox = Sandbox::new("usage");
        for args in ["", "frobnicate", "status --overlay", "reset --json"] {
            let (code, out, err) = sandbox.run(args);
            assert_eq!(code, EXIT_USAGE, "{args:?}");
            assert_eq!(out, "");
            assert!(err.starts_with("overlay-init: "), "{err}");
            assert_eq!(err.matches("overlay-init: ").count(), 1, "{err}");
            assert!(err.contains("usage: overlay-init"), "{err}");
        }
    }

    #[test]
    fn help_and_version_go_to_stdout_and_exit_0() {
        let sandbox = Sandbox::new("help");
        let (code, out, err) = sandbox.run("status --help");
        assert_eq!((code, err.as_str()), (EXIT_OK, ""));
        assert!(out.starts_with("usage: overlay-init"));
        let (code, out, _) = sandbox.run("--version");
        assert_eq!(code, EXIT_OK);
        assert_eq!(out, format!("overlay-init {}\n", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn a_failure_is_reported_once_and_exits_1() {
        let sandbox = Sandbox::new("failure");
        sandbox.boot(&BootState {
            upper: "tmpfs".into(),
            ..Default::default()
        });
        // State present, but the upper directory does not exist.
        let (code, out, err) = sandbox.run("--overlay /nonexistent/ovl reset");
        assert_eq!(code, EXIT_FAILURE);
        assert_eq!(out, "");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("/nonexistent/ovl"), "{err}");
        assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    }

    #[test]
    fn error_chain_skips_repeated_causes() {
        let inner = anyhow::anyhow!("No such file or directory (os error 2)");
        let e = inner.context("open /overlay: No such file or directory (os error 2)");
        assert_eq!(
            error_chain(&e),
            "open /overlay: No such file or directory (os error 2)"
        );
        let e = anyhow::anyhow!("disk full").context("write counter");
        assert_eq!(error_chain(&e), "write counter: disk full");
    }

    #[test]
    fn status_json_after_mark_good_shows_0_attempts() {
        let sandbox = Sandbox::new("status");
        sandbox.boot(&BootState {
            upper: "/dev/vdb".into(),
            upper_device: Some("/dev/vdb".into()),
            boot_attempts: Some(1),
            maxtries: 3,
            ..Default::default()
        });
        let overlay = PathBuf::from(sandbox.overlay());
        crate::bootcount::increment(&overlay).unwrap();
        let (code, out, _) = sandbox.run("--overlay OVERLAY status --json");
        assert_eq!(code, EXIT_OK);
        assert!(out.contains("\"boot_attempts\":1,"), "{out}");
        assert!(out.contains("\"lower_device\":\"/dev/vda\""), "{out}");
        assert!(out.contains("\"upper_fstype\":\"ext4\""), "{out}");
        let (code, out, _) = sandbox.run("--overlay OVERLAY mark-good --unless-failsafe");
        assert_eq!(code, EXIT_OK);
        assert!(out.contains("cleared (was 1)"), "{out}");
        let (_, out, _) = sandbox.run("--overlay OVERLAY status --json");
        assert!(out.contains("\"boot_attempts\":0,"), "{out}");
        assert!(out.contains("\"mode\":\"normal\""), "{out}");
    }

    #[test]
    fn mark_good_unless_failsafe_leaves_the_counter_in_failsafe() {
        let sandbox = Sandbox::new("failsafe");
        sandbox.boot(&BootState {
            mode: Mode::Failsafe,
            failsafe_reason: Some("ovl.failsafe on the kernel command line".into()),
            upper: "tmpfs".into(),
            maxtries: 3,
            ..Default::default()
        });
        let overlay = PathBuf::from(sandbox.overlay());
        crate::bootcount::increment(&overlay).unwrap();
        let (code, out, err) = sandbox.run("--overlay OVERLAY mark-good --unless-failsafe");
        assert_eq!((code, err.as_str()), (EXIT_OK, ""));
        assert!(out.starts_with("failsafe boot (ovl.failsafe"), "{out}");
        assert_eq!(crate::bootcount::read(&overlay).unwrap(), 1);
        // Plain mark-good still clears it (the way out of a boot-loop failsafe).
        let (code, _, _) = sandbox.run("--overlay OVERLAY mark-good");
        assert_eq!(code, EXIT_OK);
        assert_eq!(crate::bootcount::read(&overlay).unwrap(), 0);
    }
}
