//! Reboot, power off, and running a rescue shell as a child of PID 1.

use std::path::Path;
use std::process::Command;

use rustix::system::{reboot, RebootCommand};

/// Flush filesystems and restart the machine. Only returns if the kernel refuses.
pub fn restart() -> std::io::Error {
    rustix::fs::sync();
    match reboot(RebootCommand::Restart) {
        Ok(()) => std::io::Error::other("reboot returned"),
        Err(e) => e.into(),
    }
}

/// Flush filesystems and power the machine off. Only returns if the kernel refuses.
pub fn power_off() -> std::io::Error {
    rustix::fs::sync();
    match reboot(RebootCommand::PowerOff) {
        Ok(()) => std::io::Error::other("power off returned"),
        Err(e) => e.into(),
    }
}

/// Run `shell` interactively on the console and wait for it to exit.
pub fn run_shell(shell: &Path) -> std::io::Result<std::process::ExitStatus> {
    Command::new(shell)
        .arg("-l")
        .env("PS1", "(overlay-init rescue) # ")
        .status()
}
