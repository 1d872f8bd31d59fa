//! Processes PID 1 starts: a detached background child.

use std::ffi::CStr;

use anyhow::{Context, Result};

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
