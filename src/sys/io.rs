//! Small file helpers with context.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// Up to `len` bytes from the start of a file or device (fewer if it is shorter).
pub fn read_head(path: &Path, len: usize) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("read the first {len} bytes of {}", path.display()))?;
    Ok(buf)
}
