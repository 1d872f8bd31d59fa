//! Processes PID 1 starts: a detached background child, and a tool run to
//! its end (a formatter).

use std::ffi::{CStr, CString};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// How a detached child that panicked exits.
pub const CHILD_PANIC_EXIT: i32 = 101;

/// Run `job` in a detached child process (its own session, lowest CPU
/// priority) and return its pid at once. The child exits with `job`'s code.
///
/// The child installs its own panic hook first: PID 1's hook (the failure
/// handler: reboot, halt or a root shell on the console) must never run in a
/// background child of the booted system. A panic there is logged and the
/// child exits with [`CHILD_PANIC_EXIT`].
///
/// Only call this from a single-threaded process (PID 1 before it execs the
/// real init) or one whose other threads hold no locks.
pub fn spawn_detached(name: &CStr, job: impl FnOnce() -> i32) -> Result<i32> {
    // SAFETY: the boot path is single-threaded when it calls this, so the child
    // starts with no lock held by a thread that does not exist in it; the child
    // runs `job` and leaves through `exit` without returning into the caller.
    // libc's fork (not a raw clone), so the C library's own state stays right.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork the trash remover"),
        child @ 1.. => Ok(child),
        _ => {
            let _ = rustix::process::setsid();
            let _ = rustix::process::setpriority_process(None, 19);
            let _ = rustix::thread::set_name(name);
            let label = name.to_string_lossy().into_owned();
            std::panic::set_hook(Box::new(move |info| {
                log::error!("{label}: internal error: {info}; the child exits");
                std::process::exit(CHILD_PANIC_EXIT)
            }));
            let code = job();
            std::process::exit(code)
        }
    }
}

/// Run the program at `path` with `args` (argv[1..]), the standard streams
/// inherited, and wait for it: `Ok` when it exited 0, else an error naming it
/// and how it ended.
///
/// Only call this from a single-threaded process (see [`spawn_detached`]).
pub fn run_to_end(path: &Path, args: &[&str]) -> Result<()> {
    let shown = path.display().to_string();
    let c_path = CString::new(shown.as_bytes()).context("program path holds a NUL byte")?;
    let mut argv: Vec<CString> = vec![c_path.clone()];
    for arg in args {
        argv.push(CString::new(*arg).with_context(|| format!("argument {arg} holds a NUL byte"))?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // SAFETY: single-threaded caller (see above); the child only calls execv
    // (async-signal-safe) on pointers prepared before the fork, then _exit.
    let child = match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error()).with_context(|| format!("fork {shown}")),
        0 => unsafe {
            // SAFETY: argv_ptrs is NUL-terminated and its strings outlive the call.
            libc::execv(c_path.as_ptr(), argv_ptrs.as_ptr());
            libc::_exit(127)
        },
        child => child,
    };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("wait for {shown}"));
        }
    }
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            127 => bail!("{shown} could not be run (exit status 127)"),
            code => bail!("{shown} failed with exit status {code}"),
        }
    } else {
        bail!("{shown} was killed by signal {}", libc::WTERMSIG(status))
    }
}
