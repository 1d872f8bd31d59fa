//! The command-line tool for the running system: `overlay-init status`, `reset`,
//! `mark-good`. It works on the upper's filesystem, which the new root sees at
//! `/overlay`.

use std::path::PathBuf;

/// Where the running system sees the upper's filesystem.
pub const OVERLAY_DIR: &str = crate::layout::OVERLAY;

pub const USAGE: &str = "\
usage: overlay-init COMMAND [--overlay DIR]

commands:
  status           show the upper, and whether a reset is pending
  reset            ask for a factory reset at the next boot
  reset --cancel   drop a pending reset request
  reset --finish   wait until the old upper of an earlier reset is removed
                   (it is removed in the background after the boot)
  mark-good        this boot worked: clear the boot-attempt counter
  help             this text

--overlay DIR      the upper's filesystem (default /overlay)
";

/// Parsed command line of the tool.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Status,
    Reset { cancel: bool },
    FinishReset,
    MarkGood,
    Help,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub overlay: PathBuf,
}

/// Parse the tool's arguments; `Err` is a message for the user.
pub fn parse_args(args: &[String]) -> Result<Invocation, String> {
    let mut overlay = PathBuf::from(OVERLAY_DIR);
    let mut words = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--overlay" => {
                overlay = iter.next().ok_or("--overlay needs a directory")?.into();
            }
            "-h" | "--help" => words.push("help"),
            other => words.push(other),
        }
    }
    let command = match words.as_slice() {
        ["status"] => Command::Status,
        ["reset"] => Command::Reset { cancel: false },
        ["reset", "--cancel"] | ["--cancel", "reset"] => Command::Reset { cancel: true },
        ["reset", "--finish"] | ["--finish", "reset"] => Command::FinishReset,
        ["mark-good"] => Command::MarkGood,
        ["help"] | [] => Command::Help,
        _ => return Err(format!("unknown arguments: {}\n\n{USAGE}", args.join(" "))),
    };
    Ok(Invocation { command, overlay })
}

/// Run the tool; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    crate::logger::init_cli(false);
    let inv = match parse_args(args) {
        Ok(inv) => inv,
        Err(msg) => {
            eprintln!("overlay-init: {msg}");
            return 2;
        }
    };
    match execute(&inv) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("overlay-init: {e:#}");
            1
        }
    }
}

fn execute(inv: &Invocation) -> anyhow::Result<()> {
    let overlay = inv.overlay.as_path();
    match inv.command {
        Command::Help => print!("{USAGE}"),
        Command::Status => {
            let state_path = std::path::Path::new(crate::state::STATE_PATH);
            match crate::state::read(state_path)? {
                Some(mut state) => {
                    // The counter as it is now, not as the boot recorded it: `mark-good` may
                    // have cleared it since. A failsafe boot records none (it does not
                    // count), but its /overlay is the persistent upper, read-only.
                    if state.boot_attempts.is_some() || state.mode == crate::state::Mode::Failsafe {
                        state.boot_attempts = Some(crate::bootcount::read(overlay)?);
                    }
                    state.describe().iter().for_each(|l| println!("{l}"))
                }
                None => println!(
                    "mode: unknown (no {}: not booted by overlay-init?)",
                    state_path.display()
                ),
            }
            print!("{}", status_text(overlay)?)
        }
        Command::Reset { cancel: false } => {
            crate::reset::request(overlay)?;
            println!(
                "factory reset requested: the next boot starts from the factory state \
                 (cancel with: overlay-init reset --cancel)"
            );
        }
        Command::Reset { cancel: true } => {
            if crate::reset::cancel(overlay)? {
                println!("reset request cancelled");
            } else {
                println!("no reset was pending");
            }
        }
        Command::FinishReset => {
            let report = crate::reset::finish_trash_removal(overlay)?;
            for failure in &report.failures {
                eprintln!("overlay-init: could not remove {failure}");
            }
            println!(
                "old upper generations removed ({} entries{})",
                report.removed,
                if report.mount_points_left.is_empty() {
                    String::new()
                } else {
                    format!(", {} mount points left", report.mount_points_left.len())
                }
            );
            if let Some(stopped) = &report.stopped {
                anyhow::bail!("stopped at a filesystem-wide error: {stopped}");
            }
            if report.failure_count > 0 {
                anyhow::bail!("{} entries could not be removed", report.failure_count);
            }
        }
        Command::MarkGood => {
            let cleared = crate::bootcount::clear(overlay)?;
            println!("boot marked good: boot-attempt counter cleared (was {cleared})");
        }
    }
    Ok(())
}

/// The `status` report, one `key: value` per line.
pub fn status_text(overlay: &std::path::Path) -> anyhow::Result<String> {
    let reset = crate::reset::status(overlay)?;
    let mut out = format!("overlay: {}\n", overlay.display());
    out.push_str(&format!(
        "reset: {}\n",
        if reset.reset_pending {
            format!(
                "pending (requested by {})",
                reset.requested_by.as_deref().unwrap_or("unknown")
            )
        } else {
            "none pending".to_string()
        }
    ));
    if reset.trash_generations > 0 {
        out.push_str(&format!(
            "trash: {} old generation(s) still being removed\n",
            reset.trash_generations
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_args(&words("status")).unwrap().command,
            Command::Status
        );
        assert_eq!(
            parse_args(&words("reset --cancel")).unwrap().command,
            Command::Reset { cancel: true }
        );
        let inv = parse_args(&words("reset --overlay /mnt/x")).unwrap();
        assert_eq!(inv.command, Command::Reset { cancel: false });
        assert_eq!(inv.overlay, PathBuf::from("/mnt/x"));
        assert_eq!(
            parse_args(&words("reset --finish")).unwrap().command,
            Command::FinishReset
        );
        assert_eq!(
            parse_args(&words("mark-good")).unwrap().command,
            Command::MarkGood
        );
        assert!(parse_args(&words("frobnicate")).is_err());
        assert!(parse_args(&words("status --overlay")).is_err());
    }
}
