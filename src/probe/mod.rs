//! Superblock and partition-table readers: pure functions over bytes.
//!
//! Callers read the first bytes of a device ([`superblock::PROBE_BYTES`],
//! [`partition::TABLE_BYTES`]) and hand them here; nothing in this module does I/O.
//! Every reader is total: any input gives `Ok` or a [`ProbeError`], never a panic.

pub mod blank;
pub mod crc;
pub mod partition;
pub mod source;
pub mod superblock;
pub mod verity;

mod bytes;
mod fat;
mod iso9660;
#[cfg(test)]
mod live_tests;

use std::fmt;

/// Why a superblock or partition table could not be read: a truncated buffer,
/// a checksum mismatch, a value out of range. The message names the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError(String);

impl ProbeError {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        ProbeError(reason.into())
    }

    /// The reason, e.g. "ext4 superblock checksum mismatch".
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}
