//! Small file helpers with context.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::probe::source::ByteSource;
use crate::probe::ProbeError;

/// Up to `len` bytes from the start of a file or device (fewer if it is shorter).
pub fn read_head(path: &Path, len: usize) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("read the first {len} bytes of {}", path.display()))?;
    Ok(buf)
}

/// A device (or image file) the probe may read at any offset: the FAT and exFAT
/// root directories lie past the first bytes `read_head` gives it.
pub struct FileSource {
    file: File,
    path: PathBuf,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        Ok(FileSource {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl ByteSource for FileSource {
    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, ProbeError> {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ProbeError::new(format!(
                        "read {len} bytes at offset {offset} of {}: {e}",
                        self.path.display()
                    )))
                }
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

/// Detect the filesystem on a device or image file the way the device walk does:
/// its first bytes, then whatever the reader needs past them.
pub fn detect_filesystem(
    path: &Path,
) -> Result<Result<Option<crate::probe::superblock::FsInfo>, ProbeError>> {
    let head = read_head(path, crate::probe::superblock::PROBE_BYTES)?;
    let mut source = FileSource::open(path)?;
    Ok(crate::probe::superblock::detect_with(&head, &mut source))
}
