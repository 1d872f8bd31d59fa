//! The kernel's uevent multicast: an `AF_NETLINK` / `NETLINK_KOBJECT_UEVENT`
//! socket, read with a timeout (poll on the fd, never a sleep).
//!
//! Only messages the kernel itself sent are accepted: the source address's
//! port id (`nl_pid`) is 0 for the kernel and nonzero for every userspace
//! socket, and userspace cannot choose it, so this is the check that cannot be
//! forged. (systemd and kata-agent also read `SO_PASSCRED` credentials; rustix's
//! `UCred` holds the pid as non-zero, and the kernel's own messages carry pid 0,
//! so decoding them through rustix would be unsound. The port-id check is the one
//! that matters.) udevd's re-broadcasts in `libudev\0` format are dropped too.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{
    bind, recvfrom, socket_with, sockopt, AddressFamily, RecvFlags, SocketFlags, SocketType,
};
use rustix::time::Timespec;

use crate::uevent::{parse_netlink, Uevent};

/// The kernel multicasts uevents to group 1 of NETLINK_KOBJECT_UEVENT (udevd uses group 2).
const KERNEL_GROUP: u32 = 1;
/// Room for a burst of events (a disk with many partitions, many loop devices)
/// while the caller is busy probing: the same size udevd asks for.
const RECEIVE_BUFFER_BYTES: usize = 128 * 1024 * 1024;
/// The kernel's UEVENT_BUFFER_SIZE is 2048; leave room to spare.
const DATAGRAM_BYTES: usize = 8192;

/// What one receive produced.
#[derive(Debug)]
pub enum Received {
    Event(Uevent),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The socket's buffer overflowed and events were lost: the caller must
    /// rescan (coldplug again) to learn the current state.
    Overflow,
}

pub struct UeventSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl UeventSocket {
    /// Open and bind the socket; from this moment on every kernel uevent is queued.
    pub fn open() -> Result<Self> {
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            Some(netlink::KOBJECT_UEVENT),
        )
        .context("uevent socket: socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)")?;
        // SO_RCVBUFFORCE passes the rmem_max limit when we are root (PID 1 is);
        // the plain option is the best an unprivileged caller can do.
        if let Err(force_err) =
            sockopt::set_socket_recv_buffer_size_force(&fd, RECEIVE_BUFFER_BYTES)
        {
            log::debug!("uevent socket: SO_RCVBUFFORCE: {force_err}; trying SO_RCVBUF");
            if let Err(err) = sockopt::set_socket_recv_buffer_size(&fd, RECEIVE_BUFFER_BYTES) {
                log::warn!("uevent socket: cannot enlarge the receive buffer: {err}");
            }
        }
        // Port id 0 lets the kernel pick a unique one for us.
        bind(&fd, &SocketAddrNetlink::new(0, KERNEL_GROUP))
            .context("uevent socket: bind to the kernel multicast group")?;
        Ok(UeventSocket {
            fd,
            buf: vec![0; DATAGRAM_BYTES],
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Wait for the next kernel uevent, at most `timeout` (`None`: without limit).
    /// Messages that are not from the kernel, or do not parse, are logged and skipped.
    pub fn receive(&mut self, timeout: Option<Duration>) -> Result<Received> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_receive_one()? {
                Some(Received::Event(event)) => return Ok(Received::Event(event)),
                Some(other) => return Ok(other),
                None => {}
            }
            let remaining = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Ok(Received::Timeout),
                },
                None => None,
            };
            if !self.wait_readable(remaining)? {
                return Ok(Received::Timeout);
            }
        }
    }

    /// Whether the socket became readable before `timeout`.
    fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool> {
        let timespec = timeout.map(|t| {
            Timespec::try_from(t).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        loop {
            match poll(&mut fds, timespec.as_ref()) {
                Ok(n) => return Ok(n > 0),
                // A signal (SIGCHLD of a module loader, say) is not a timeout;
                // retrying with the full timeout only delays the caller's own
                // deadline check, which it does against the clock.
                Err(Errno::INTR) => continue,
                Err(err) => return Err(io::Error::from(err)).context("uevent socket: poll"),
            }
        }
    }

    /// Read one queued datagram without blocking. `None`: nothing usable was queued
    /// (empty queue, or a message that was dropped).
    fn try_receive_one(&mut self) -> Result<Option<Received>> {
        let (len, full_len, from) = match recvfrom(
            &self.fd,
            &mut self.buf[..],
            // TRUNC: report the full length so a cut message is noticed, not parsed.
            RecvFlags::DONTWAIT | RecvFlags::TRUNC,
        ) {
            Ok(got) => got,
            Err(Errno::AGAIN) | Err(Errno::INTR) => return Ok(None),
            Err(Errno::NOBUFS) => {
                log::warn!(
                    "uevent socket: receive buffer overflowed, events were lost; rescanning"
                );
                return Ok(Some(Received::Overflow));
            }
            Err(err) => return Err(io::Error::from(err)).context("uevent socket: recvfrom"),
        };
        let sender = from.and_then(|a| SocketAddrNetlink::try_from(a).ok());
        match sender {
            Some(addr) if addr.pid() == 0 => {}
            Some(addr) => {
                log::warn!(
                    "uevent socket: dropped a message from port {} (not the kernel)",
                    addr.pid()
                );
                return Ok(None);
            }
            None => {
                log::warn!("uevent socket: dropped a message without a netlink sender address");
                return Ok(None);
            }
        }
        if full_len > len {
            log::warn!("uevent socket: dropped a truncated {full_len}-byte message");
            return Ok(None);
        }
        match parse_netlink(&self.buf[..len]) {
            Ok(event) => Ok(Some(Received::Event(event))),
            Err(err) => {
                log::debug!("uevent socket: dropped a message: {err}");
                Ok(None)
            }
        }
    }
}
