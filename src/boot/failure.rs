//! The one place every fatal boot error ends: say what failed, then do what
//! `ovl.onfail=` says. PID 1 never exits.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::cmdline::OnFail;

/// The rescue shell looked for in the initramfs.
pub const RESCUE_SHELL: &str = "/bin/sh";
/// Seconds shown before an automatic reboot.
pub const REBOOT_COUNTDOWN: u64 = 10;

/// The action to take, given `ovl.onfail=` and whether a shell exists.
pub fn choose_action(onfail: Option<OnFail>, shell_present: bool) -> OnFail {
    match onfail {
        Some(OnFail::Shell) if !shell_present => OnFail::Reboot,
        Some(action) => action,
        None if shell_present => OnFail::Shell,
        None => OnFail::Reboot,
    }
}

/// A boxed, multi-line message that stands out on a serial console. Lines
/// holding newlines (a device listing) become several box lines.
pub fn boxed(title: &str, lines: &[String]) -> String {
    let lines: Vec<&str> = lines.iter().flat_map(|l| l.lines()).collect();
    let width = lines
        .iter()
        .map(|l| l.chars().count())
        .chain(std::iter::once(title.chars().count()))
        .max()
        .unwrap_or(0)
        .min(100);
    let rule = "*".repeat(width + 4);
    let mut out = format!("{rule}\n* {title:<width$} *\n");
    for line in lines {
        out.push_str(&format!("* {line:<width$} *\n"));
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

/// A warning that must not be missed: boxed on the console and logged.
pub fn warn_box(title: &str, lines: &[String]) {
    log::warn!("{title}: {}", lines.join("; "));
    eprint!("{}", boxed(&format!("WARNING: {title}"), lines));
}

/// The failing step and every cause in the chain, one per line.
pub fn describe(step: &str, err: &anyhow::Error) -> Vec<String> {
    let mut lines = vec![format!("step: {step}")];
    for (i, cause) in err.chain().enumerate() {
        let prefix = if i == 0 { "error: " } else { "cause: " };
        lines.push(format!("{prefix}{cause}"));
    }
    lines
}

/// Report a fatal error and never return.
pub fn fatal(step: &str, err: &anyhow::Error, onfail: Option<OnFail>) -> ! {
    let lines = describe(step, err);
    log::error!("boot failed at step {step:?}: {err:#}");
    let text = boxed("overlay-init: BOOT FAILED", &lines);
    let _ = std::io::stderr().write_all(text.as_bytes());
    let shell = Path::new(RESCUE_SHELL);
    let action = choose_action(onfail, shell.exists());
    loop {
        match action {
            OnFail::Shell => {
                eprintln!("overlay-init: starting a rescue shell ({RESCUE_SHELL}); exit it to try again to reboot");
                match crate::sys::power::run_shell(shell) {
                    Ok(_) => {
                        eprintln!("overlay-init: rescue shell exited; rebooting");
                        countdown_and_reboot(3);
                    }
                    Err(e) => {
                        log::error!("cannot run {RESCUE_SHELL}: {e}");
                        countdown_and_reboot(REBOOT_COUNTDOWN);
                    }
                }
            }
            OnFail::Reboot => countdown_and_reboot(REBOOT_COUNTDOWN),
            OnFail::Halt => {
                eprintln!("overlay-init: halting (ovl.onfail=halt)");
                let e = crate::sys::power::power_off();
                log::error!("power off failed: {e}");
                idle_forever();
            }
        }
    }
}

fn countdown_and_reboot(secs: u64) {
    for left in (1..=secs).rev() {
        eprint!("\roverlay-init: rebooting in {left} s ");
        // The countdown is for a human to read: a sleep is what it is.
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!();
    let e = crate::sys::power::restart();
    log::error!("reboot failed: {e}");
}

fn idle_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Route a Rust panic in PID 1 to the same handler (`panic = "abort"` would
/// otherwise kill PID 1 and panic the kernel).
pub fn install_panic_hook(onfail: Option<OnFail>) {
    std::panic::set_hook(Box::new(move |info| {
        let err = anyhow::anyhow!("internal error: {info}");
        fatal("panic", &err, onfail);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_shell_if_present_else_reboot() {
        assert_eq!(choose_action(None, true), OnFail::Shell);
        assert_eq!(choose_action(None, false), OnFail::Reboot);
        assert_eq!(choose_action(Some(OnFail::Shell), false), OnFail::Reboot);
        assert_eq!(choose_action(Some(OnFail::Halt), true), OnFail::Halt);
        assert_eq!(choose_action(Some(OnFail::Reboot), true), OnFail::Reboot);
    }

    #[test]
    fn message_names_step_and_causes() {
        let err = anyhow::anyhow!("no such device").context("mount /dev/vda on /.ovl/rom");
        let lines = describe("mount lower", &err);
        assert_eq!(
            lines,
            vec![
                "step: mount lower",
                "error: mount /dev/vda on /.ovl/rom",
                "cause: no such device"
            ]
        );
        let mut lines = lines;
        lines.push("two\nlines".into());
        let b = boxed("T", &lines);
        assert!(b.contains("* two"));
        assert!(b
            .lines()
            .all(|l| l.chars().count() == b.lines().next().unwrap().chars().count()));
    }
}
