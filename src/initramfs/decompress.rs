//! Compressed kernel modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) opened on the build host.
//!
//! Pure-Rust decoders only (`lzma-rs`, `ruzstd`, `flate2`'s Rust backend), so the
//! builder stays free of C libraries. Only the builder calls this: the init never
//! decompresses anything (the kernel does, for `--keep-compressed` initramfs images).

use anyhow::{bail, Result};
use std::io::Read;

/// How a module file is compressed, judged by its name the way kmod does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// `virtio.ko.zst` -> `Zstd`; anything not ending in a compressed suffix -> `None`.
    pub fn of_file_name(file_name: &str) -> Compression {
        [
            (".ko.gz", Compression::Gzip),
            (".ko.xz", Compression::Xz),
            (".ko.zst", Compression::Zstd),
        ]
        .into_iter()
        .find(|(suffix, _)| file_name.ends_with(suffix))
        .map_or(Compression::None, |(_, kind)| kind)
    }

    /// The suffix after `.ko` (`.xz`), empty for `None`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
        }
    }

    /// The kernel option that makes `finit_module` decompress this format
    /// (besides `CONFIG_MODULE_DECOMPRESS=y`); `None` for uncompressed files.
    pub fn kernel_config_option(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("CONFIG_MODULE_COMPRESS_GZIP"),
            Compression::Xz => Some("CONFIG_MODULE_COMPRESS_XZ"),
            Compression::Zstd => Some("CONFIG_MODULE_COMPRESS_ZSTD"),
        }
    }

    /// The magic bytes every file of this format starts with.
    fn magic(self) -> &'static [u8] {
        match self {
            Compression::None => b"\x7fELF",
            Compression::Gzip => &[0x1f, 0x8b],
            Compression::Xz => b"\xfd7zXZ\0",
            Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
        }
    }

    fn format_name(self) -> &'static str {
        match self {
            Compression::None => "ELF",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// The file name with its compression suffix dropped (`virtio.ko.xz` -> `virtio.ko`).
pub fn uncompressed_file_name(file_name: &str) -> &str {
    let suffix = Compression::of_file_name(file_name).suffix();
    file_name.strip_suffix(suffix).unwrap_or(file_name)
}

/// The decompressed contents. Checksums are verified (xz CRC32/CRC64, zstd's content
/// checksum when present, gzip CRC32), so a corrupt or truncated file is an error,
/// never silently wrong bytes. Errors say what is wrong, not which file: callers add that.
pub fn decompress(compression: Compression, bytes: &[u8]) -> Result<Vec<u8>> {
    if !bytes.starts_with(compression.magic()) {
        bail!(
            "not a {} file (its first bytes are not the {} magic)",
            compression.format_name(),
            compression.format_name()
        );
    }
    match compression {
        Compression::None => Ok(bytes.to_vec()),
        Compression::Gzip => gunzip(bytes),
        Compression::Xz => unxz(bytes),
        Compression::Zstd => unzstd(bytes),
    }
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|error| anyhow::anyhow!("gzip data is corrupt or truncated: {error}"))?;
    Ok(out)
}

fn unxz(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut input = bytes;
    lzma_rs::xz_decompress(&mut input, &mut out).map_err(|error| match error {
        lzma_rs::error::Error::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            anyhow::anyhow!("xz data is truncated")
        }
        other => anyhow::anyhow!("xz data is corrupt or unsupported: {other}"),
    })?;
    Ok(out)
}

/// Every frame in turn (`zstd` writes one; concatenated files hold several), skipping
/// skippable frames, and checking each frame's content checksum when it has one.
fn unzstd(bytes: &[u8]) -> Result<Vec<u8>> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

    let mut out = Vec::new();
    let mut input = bytes;
    let mut decoder = FrameDecoder::new();
    while !input.is_empty() {
        match decoder.reset(&mut input) {
            Ok(()) => {}
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                let Some(rest) = input.get(length as usize..) else {
                    bail!("zstd data is truncated (in a skippable frame)");
                };
                input = rest;
                continue;
            }
            Err(error) => bail!("zstd frame header is corrupt or truncated: {error}"),
        }
        while !decoder.is_finished() {
            decoder
                .decode_blocks(&mut input, BlockDecodingStrategy::UptoBlocks(1))
                .map_err(|error| anyhow::anyhow!("zstd data is corrupt or truncated: {error}"))?;
            decoder.collect_to_writer(&mut out)?;
        }
        decoder.collect_to_writer(&mut out)?;
        if let Some(expected) = decoder.get_checksum_from_data() {
            let actual = decoder.get_calculated_checksum();
            if actual != Some(expected) {
                bail!("zstd content checksum mismatch: the file is corrupt");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_known_from_the_file_name() {
        assert_eq!(Compression::of_file_name("a.ko"), Compression::None);
        assert_eq!(Compression::of_file_name("a.ko.gz"), Compression::Gzip);
        assert_eq!(Compression::of_file_name("a-b.ko.xz"), Compression::Xz);
        assert_eq!(Compression::of_file_name("a.ko.zst"), Compression::Zstd);
        assert_eq!(uncompressed_file_name("virtio.ko.zst"), "virtio.ko");
        assert_eq!(uncompressed_file_name("virtio.ko"), "virtio.ko");
    }

    #[test]
    fn wrong_magic_is_named() {
        let error = decompress(Compression::Xz, b"\x28\xb5\x2f\xfd....").unwrap_err();
        assert!(error.to_string().contains("not a xz file"), "{error}");
        let error = decompress(Compression::Zstd, b"").unwrap_err();
        assert!(error.to_string().contains("not a zstd file"), "{error}");
    }

    #[test]
    fn gzip_round_trips_and_truncation_is_an_error() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|n| (n % 251).to_le_bytes())
            .collect();
        let packed = crate::initramfs::gzip(&data);
        assert_eq!(decompress(Compression::Gzip, &packed).unwrap(), data);
        assert!(decompress(Compression::Gzip, &packed[..packed.len() - 5]).is_err());
    }

    #[test]
    fn zstd_skippable_frame_is_skipped_and_bad_checksum_is_caught() {
        // An empty raw-block frame with a checksum, from `printf '' | zstd -C`:
        // magic, descriptor (single segment, checksum), size 0, last raw block of 0, xxh64 low 32 bits.
        let empty_frame: &[u8] = &[
            0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x00, 0x01, 0x00, 0x00, 0x99, 0xe9, 0xd8, 0x51,
        ];
        assert_eq!(decompress(Compression::Zstd, empty_frame).unwrap(), b"");
        let mut with_skippable = empty_frame.to_vec();
        with_skippable.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 7, 7]);
        with_skippable.extend_from_slice(empty_frame);
        assert_eq!(decompress(Compression::Zstd, &with_skippable).unwrap(), b"");
        let mut corrupt = empty_frame.to_vec();
        *corrupt.last_mut().unwrap() ^= 1;
        let error = decompress(Compression::Zstd, &corrupt).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}
