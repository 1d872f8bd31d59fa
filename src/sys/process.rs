//! Processes PID 1 starts: a detached background child, and a tool run to
//! its end (a formatter).

use std::ffi::{CStr, CString};
use std::path::Path;
use std::time::{Duration, Instant};

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

/// How a program run by [`run_captured`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// It ran past the timeout and was killed (SIGKILL).
    TimedOut,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exit status: {code}"),
            Ended::Signalled(signal) => write!(f, "signal: {signal}"),
            Ended::TimedOut => f.write_str("killed after the timeout"),
        }
    }
}

/// What a program run by [`run_captured`] is given.
pub struct Captured<'a> {
    /// An absolute path (inside `root` when there is one): no `PATH` search.
    pub program: &'a Path,
    /// argv[1..].
    pub args: &'a [String],
    /// The whole environment (`NAME=value`); nothing is inherited.
    pub env: &'a [&'a str],
    /// chroot(2) into this directory (and chdir to its `/`) before the exec.
    pub root: Option<&'a Path>,
    /// Killed (SIGKILL) when it runs longer.
    pub timeout: Duration,
}

/// Bytes of output kept (the last ones win): a tool's complaint, not a log.
const OUTPUT_KEPT: usize = 16 * 1024;

/// Run a program with stdin from /dev/null and its stdout and stderr captured
/// (one pipe, in the order written), wait for it at most `timeout` (a pidfd and
/// the pipe polled together, so a talkative tool cannot fill the pipe and stall),
/// and return how it ended with its output (lossy UTF-8).
///
/// fork and execve themselves rather than `std::process::Command` (std's
/// process spawning and environment copying, for the first-boot formatter only).
/// Everything the child needs is built before the fork, so it only makes
/// async-signal-safe calls: safe to call from a multi-threaded process too.
pub fn run_captured(run: &Captured<'_>) -> Result<(Ended, String)> {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::io::Errno;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    let shown = run.program.display();
    let cstring = |what: &str, bytes: &[u8]| {
        CString::new(bytes).with_context(|| format!("{what} of {shown} holds a NUL byte"))
    };
    let program = cstring("the path", run.program.as_os_str().as_bytes())?;
    let mut argv = vec![program.clone()];
    for arg in run.args {
        argv.push(cstring("an argument", arg.as_bytes())?);
    }
    let env = run
        .env
        .iter()
        .map(|e| cstring("the environment", e.as_bytes()))
        .collect::<Result<Vec<_>>>()?;
    let root = match run.root {
        Some(root) => Some(cstring("the root", root.as_os_str().as_bytes())?),
        None => None,
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let null = rustix::fs::open(
        c"/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .context("open /dev/null")?;
    let (reader, writer) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let (null_fd, writer_fd) = (null.as_raw_fd(), writer.as_raw_fd());
    const CHROOT_FAILED: &[u8] = b"overlay-init: chroot into the root for the program failed\n";
    const EXEC_FAILED: &[u8] = b"overlay-init: exec failed\n";
    // SAFETY: the child only makes async-signal-safe calls (dup2, chroot, chdir,
    // signal, sigprocmask, execve, write, _exit) on data built before the fork,
    // so it is sound even if another thread held a lock at the fork; it leaves
    // through execve or _exit, never returning into the caller. `argv_ptrs` and
    // `env_ptrs` are NULL-terminated arrays of pointers into CStrings that
    // outlive the calls.
    let child = match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error()).with_context(|| format!("fork {shown}")),
        // SAFETY: see above: async-signal-safe calls only, on data built before the fork.
        0 => unsafe {
            // The pipe and /dev/null are close-on-exec; dup2's copies are not.
            if libc::dup2(null_fd, 0) < 0
                || libc::dup2(writer_fd, 1) < 0
                || libc::dup2(writer_fd, 2) < 0
            {
                libc::_exit(127);
            }
            if let Some(root) = &root {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    libc::write(2, CHROOT_FAILED.as_ptr().cast(), CHROOT_FAILED.len());
                    libc::_exit(127);
                }
            }
            // The state a new process expects: SIGPIPE default (the Rust runtime
            // ignores it), nothing blocked.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::write(2, EXEC_FAILED.as_ptr().cast(), EXEC_FAILED.len());
            libc::_exit(127)
        },
        child => child,
    };
    drop(writer);
    drop(null);
    let pid = rustix::process::Pid::from_raw(child).context("fork returned no pid")?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .with_context(|| format!("pidfd_open for {shown}"));
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            kill_and_reap(child);
            return Err(e);
        }
    };
    let deadline = Instant::now() + run.timeout;
    let mut output = Vec::new();
    let mut pipe_open = true;
    let mut buffer = [0u8; 4096];
    let ended = loop {
        if let Some(ended) = try_reap(child).with_context(|| format!("wait for {shown}"))? {
            break ended;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            kill_and_reap(child);
            break Ended::TimedOut;
        }
        let timespec = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [
            PollFd::new(&pidfd, PollFlags::IN),
            PollFd::new(&reader, PollFlags::IN),
        ];
        let polled = if pipe_open {
            &mut fds[..]
        } else {
            &mut fds[..1]
        };
        match poll(polled, Some(&timespec)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                kill_and_reap(child);
                return Err(e).with_context(|| format!("poll while {shown} runs"));
            }
        }
        if pipe_open && !fds[1].revents().is_empty() {
            pipe_open = read_some(&reader, &mut buffer, &mut output);
        }
    };
    // What is left in the pipe (a process the program started may still hold
    // it open: read what is there, never wait for its end).
    while pipe_open {
        let mut fds = [PollFd::new(&reader, PollFlags::IN)];
        match poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        ) {
            Ok(0) => break,
            Ok(_) => pipe_open = read_some(&reader, &mut buffer, &mut output),
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    Ok((ended, String::from_utf8_lossy(&output).into_owned()))
}

/// One read from the pipe into `output` (keeping its last [`OUTPUT_KEPT`]
/// bytes); false at its end or on an error.
fn read_some(reader: &std::os::fd::OwnedFd, buffer: &mut [u8], output: &mut Vec<u8>) -> bool {
    match rustix::io::read(reader, &mut *buffer) {
        Ok(0) => false,
        Ok(n) => {
            output.extend_from_slice(&buffer[..n]);
            if output.len() > OUTPUT_KEPT {
                output.drain(..output.len() - OUTPUT_KEPT);
            }
            true
        }
        Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => true,
        Err(_) => false,
    }
}

/// The child's end if it has ended (`waitpid` with `WNOHANG`).
fn try_reap(child: libc::pid_t) -> std::io::Result<Option<Ended>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        match unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } {
            0 => return Ok(None),
            r if r == child => return Ok(Some(ended_of(status))),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

fn ended_of(status: libc::c_int) -> Ended {
    if libc::WIFEXITED(status) {
        Ended::Exited(libc::WEXITSTATUS(status))
    } else {
        Ended::Signalled(libc::WTERMSIG(status))
    }
}

/// SIGKILL our child and wait for it.
fn kill_and_reap(child: libc::pid_t) {
    // SAFETY: signals and waits for our own child, not yet reaped (its pid
    // cannot have been reused); `status` is a valid out-pointer.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        let mut status: libc::c_int = 0;
        while libc::waitpid(child, &mut status, 0) == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, env: &[&str], timeout: Duration) -> (Ended, String) {
        let args = ["-c".to_string(), script.to_string()];
        run_captured(&Captured {
            program: Path::new("/bin/sh"),
            args: &args,
            env,
            root: None,
            timeout,
        })
        .unwrap()
    }

    const PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

    #[test]
    fn captures_both_streams_and_the_exit_status() {
        let (ended, output) = sh(
            "echo out; echo err >&2; exit 3",
            &[PATH],
            Duration::from_secs(30),
        );
        assert_eq!(ended, Ended::Exited(3));
        assert_eq!(output, "out\nerr\n");
    }

    #[test]
    fn the_environment_is_only_what_is_given_and_stdin_is_empty() {
        let (ended, output) = sh(
            "echo \"[$HOME][$X]\"; cat; echo end",
            &[PATH, "X=1"],
            Duration::from_secs(30),
        );
        assert_eq!(ended, Ended::Exited(0));
        assert_eq!(output, "[][1]\nend\n");
    }

    #[test]
    fn a_program_past_its_timeout_is_killed() {
        let started = Instant::now();
        let (ended, _) = sh(
            "echo started; exec sleep 60",
            &[PATH],
            Duration::from_millis(300),
        );
        assert_eq!(ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_talkative_program_does_not_stall_and_its_last_output_is_kept() {
        let (ended, output) = sh(
            "i=0; while [ $i -lt 3000 ]; do echo line $i of many lines of output; i=$((i+1)); done",
            &[PATH],
            Duration::from_secs(60),
        );
        assert_eq!(ended, Ended::Exited(0));
        assert_eq!(output.len(), OUTPUT_KEPT);
        assert!(output.ends_with("line 2999 of many lines of output\n"));
    }

    #[test]
    fn a_program_that_cannot_be_run_says_so() {
        let (ended, output) = run_captured(&Captured {
            program: Path::new("/nonexistent/mkfs"),
            args: &[],
            env: &[PATH],
            root: None,
            timeout: Duration::from_secs(30),
        })
        .unwrap();
        assert_eq!(ended, Ended::Exited(127));
        assert!(output.contains("exec failed"), "{output}");
    }

    #[test]
    fn a_signal_is_reported() {
        let (ended, _) = sh("kill -TERM $$", &[PATH], Duration::from_secs(30));
        assert_eq!(ended, Ended::Signalled(libc::SIGTERM));
    }
}
