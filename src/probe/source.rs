//! Random access to a device's bytes, for the readers that must look past the
//! first [`PROBE_BYTES`](super::superblock::PROBE_BYTES): the FAT and exFAT root
//! directories (where the volume label lives) and the ISO 9660 volume
//! descriptor set. The probe stays pure: tests hand it a byte slice, the boot
//! path a device (`sys::io::FileSource`).

use super::ProbeError;

/// Bytes of a device at any offset.
pub trait ByteSource {
    /// Up to `len` bytes at `offset`: fewer (possibly none) past the end of the
    /// device. An I/O error is a [`ProbeError`] naming the offset.
    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, ProbeError>;
}

/// A device image held in memory (a test fixture, or a device's first bytes
/// when nothing more can be read).
pub struct SliceSource<'a>(pub &'a [u8]);

impl ByteSource for SliceSource<'_> {
    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, ProbeError> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(Vec::new());
        };
        let start = start.min(self.0.len());
        let end = start.saturating_add(len).min(self.0.len());
        Ok(self.0[start..end].to_vec())
    }
}

/// The most directory bytes a label search reads beyond the first bytes of a
/// device: mkfs tools write the label as the first entry, and a crafted device
/// must not make the boot read megabytes. (blkid scans up to 10000 exFAT
/// entries, 320 KiB, and 100 FAT32 clusters.)
pub(crate) const LABEL_SEARCH_BUDGET: usize = 1 << 20;

/// Reads past the first bytes of a device, within [`LABEL_SEARCH_BUDGET`].
pub(crate) struct Budgeted<'a> {
    source: &'a mut dyn ByteSource,
    left: usize,
}

impl<'a> Budgeted<'a> {
    pub(crate) fn new(source: &'a mut dyn ByteSource) -> Self {
        Budgeted {
            source,
            left: LABEL_SEARCH_BUDGET,
        }
    }

    /// Up to `len` bytes at `offset`; `None` once the budget is spent.
    pub(crate) fn read(&mut self, offset: u64, len: usize) -> Result<Option<Vec<u8>>, ProbeError> {
        if self.left == 0 {
            return Ok(None);
        }
        let len = len.min(self.left);
        self.left -= len;
        self.source.read_at(offset, len).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_are_short_at_the_end_and_empty_past_it() {
        let mut src = SliceSource(b"abcdef");
        assert_eq!(src.read_at(2, 3).unwrap(), b"cde");
        assert_eq!(src.read_at(4, 10).unwrap(), b"ef");
        assert_eq!(src.read_at(6, 1).unwrap(), b"");
        assert_eq!(src.read_at(u64::MAX, usize::MAX).unwrap(), b"");
    }

    #[test]
    fn the_budget_caps_what_is_read() {
        let data = vec![7u8; LABEL_SEARCH_BUDGET + 10];
        let mut src = SliceSource(&data);
        let mut budgeted = Budgeted::new(&mut src);
        let first = budgeted.read(0, LABEL_SEARCH_BUDGET - 4).unwrap().unwrap();
        assert_eq!(first.len(), LABEL_SEARCH_BUDGET - 4);
        assert_eq!(budgeted.read(0, 100).unwrap().unwrap().len(), 4);
        assert_eq!(budgeted.read(0, 1).unwrap(), None);
    }
}
