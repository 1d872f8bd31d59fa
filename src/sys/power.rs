//! Reboot, power off, and running a rescue shell as a child of PID 1.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// Run `shell -l` interactively on the console (the environment plus `PS1`) and
/// wait for it to exit; returns its wait status.
///
/// fork, execve and waitpid themselves rather than `std::process::Command`, which
/// links std's process-spawning and environment-copying machinery (~10 KiB) for
/// this one rescue path. Everything the child needs is built before the fork, so
/// the child only makes async-signal-safe calls.
pub fn run_shell(shell: &Path) -> std::io::Result<i32> {
    let path = CString::new(shell.as_os_str().as_bytes())?;
    let login = CString::new("-l")?;
    let mut env = vec![CString::new("PS1=(overlay-init rescue) # ")?];
    for (key, value) in std::env::vars_os() {
        if key.as_bytes() != b"PS1" {
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            env.push(CString::new(pair)?);
        }
    }
    let argv = [path.as_ptr(), login.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: the child only makes async-signal-safe calls (signal, sigprocmask,
    // execve, _exit) on data built before the fork, so it is sound even if
    // another thread held a lock at the fork. `argv` and `envp` are
    // NULL-terminated arrays of pointers into CStrings that outlive the calls.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; the child never returns into the caller.
        unsafe {
            // The state a new process expects: SIGPIPE default, nothing blocked.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
