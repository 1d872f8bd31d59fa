//! Wait a bounded time for a line typed on the console (the failsafe key
//! window): poll(2) on the file descriptor with the remaining time, so the
//! window ends early on a key and never sleeps blindly.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::termios::{self, InputModes, LocalModes, OptionalActions, QueueSelector};

/// How a key window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWait {
    /// A line the caller accepts was typed.
    Accepted,
    /// The window passed without one.
    TimedOut,
    /// The input was closed (end of file or hang-up) before the window ended.
    Closed,
}

/// Collects typed bytes into lines and says whether one was accepted. Lines
/// longer than `MAX_LINE` are cut, so garbage on a serial line cannot grow it.
#[derive(Debug, Default)]
pub struct LineScanner {
    line: Vec<u8>,
}

const MAX_LINE: usize = 64;

impl LineScanner {
    /// Feed bytes; `true` as soon as a complete line satisfies `accept`.
    pub fn feed(&mut self, bytes: &[u8], accept: &impl Fn(&[u8]) -> bool) -> bool {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                let hit = accept(&self.line);
                self.line.clear();
                if hit {
                    return true;
                }
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        false
    }
}

/// Is a terminal attached to standard input (the console PID 1 inherits)?
pub fn console_attached() -> bool {
    termios::isatty(std::io::stdin().as_fd())
}

/// On standard input (the console): show `prompt`, then wait up to `window` for
/// a line `accept` likes. The terminal is put in canonical mode with echo for
/// the window (the person sees what they type) and restored afterwards; input
/// typed before the prompt is discarded.
pub fn wait_on_console(
    prompt: &str,
    window: Duration,
    accept: impl Fn(&[u8]) -> bool,
) -> Result<KeyWait> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let saved = termios::tcgetattr(fd).context("tcgetattr on the console")?;
    let mut line_mode = saved.clone();
    line_mode.local_modes |= LocalModes::ICANON | LocalModes::ECHO | LocalModes::ECHONL;
    line_mode.input_modes |= InputModes::ICRNL;
    termios::tcsetattr(fd, OptionalActions::Now, &line_mode).context("tcsetattr on the console")?;
    let _ = termios::tcflush(fd, QueueSelector::IFlush);
    eprintln!("overlay-init: {prompt} ({} s)", window.as_secs());
    let result = wait_for_line(fd, window, accept);
    let _ = termios::tcsetattr(fd, OptionalActions::Now, &saved);
    result
}

/// Wait up to `window` for a line on `fd` that `accept` likes.
pub fn wait_for_line(
    fd: BorrowedFd<'_>,
    window: Duration,
    accept: impl Fn(&[u8]) -> bool,
) -> Result<KeyWait> {
    let deadline = Instant::now() + window;
    let mut scanner = LineScanner::default();
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(KeyWait::TimedOut);
        }
        let timeout = rustix::time::Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Ok(KeyWait::TimedOut),
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e).context("poll the console"),
        }
        let revents = fds[0].revents();
        if !revents.contains(PollFlags::IN) {
            // HUP or ERR without data: nobody can type here any more.
            return Ok(KeyWait::Closed);
        }
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return Ok(KeyWait::Closed),
            Ok(n) => {
                if scanner.feed(&buf[..n], &accept) {
                    return Ok(KeyWait::Accepted);
                }
            }
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(e) => return Err(e).context("read the console"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;

    fn is_f(line: &[u8]) -> bool {
        line == b"f"
    }

    #[test]
    fn scanner_needs_a_whole_accepted_line() {
        let mut s = LineScanner::default();
        assert!(!s.feed(b"f", &is_f), "no Enter yet");
        assert!(s.feed(b"\n", &is_f));
        let mut s = LineScanner::default();
        assert!(!s.feed(b"x\nff\n", &is_f));
        assert!(s.feed(b"f\r", &is_f));
        let mut s = LineScanner::default();
        let long = vec![b'a'; 1000];
        assert!(!s.feed(&long, &is_f));
        assert!(!s.feed(b"f\n", &is_f), "a cut line is still one line");
        assert!(s.feed(b"f\n", &is_f));
    }

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (read, write) = rustix::pipe::pipe().unwrap();
        (read, std::fs::File::from(write))
    }

    #[test]
    fn typed_line_ends_the_window_early() {
        let (read, mut write) = pipe();
        write.write_all(b"hello\nf\n").unwrap();
        let started = Instant::now();
        let got = wait_for_line(read.as_fd(), Duration::from_secs(30), is_f).unwrap();
        assert_eq!(got, KeyWait::Accepted);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn window_passes_without_the_key() {
        let (read, mut write) = pipe();
        write.write_all(b"x\n").unwrap();
        let started = Instant::now();
        let got = wait_for_line(read.as_fd(), Duration::from_millis(300), is_f).unwrap();
        assert_eq!(got, KeyWait::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(write);
    }

    #[test]
    fn closed_input_ends_the_window() {
        let (read, write) = pipe();
        drop(write);
        let got = wait_for_line(read.as_fd(), Duration::from_secs(30), is_f).unwrap();
        assert_eq!(got, KeyWait::Closed);
    }
}
