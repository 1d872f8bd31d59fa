//! A kernel module's own metadata: the ELF64 `.modinfo` section of a `.ko` file.
//!
//! The section is a run of NUL-terminated `key=value` strings (`name=`, `depends=`,
//! `softdep=`, `alias=`, ...), sometimes padded with extra NULs. Debian ships no
//! `modules.dep`, so this is where dependencies come from.

use std::fmt;

/// What the builder needs from one module's `.modinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, normalised (`-` -> `_`); absent in some very old modules.
    pub name: Option<String>,
    /// `depends=`: modules whose symbols this one uses, normalised.
    pub depends: Vec<String>,
    /// `softdep=pre: ...`: names (module names or aliases) to load before this one.
    pub softdep_pre: Vec<String>,
    /// `softdep=post: ...`: names to load after this one.
    pub softdep_post: Vec<String>,
    /// `alias=`: other names this module answers to (`crc32c`, `crypto-crc32c`, ...).
    pub aliases: Vec<String>,
}

/// Why a file could not be read as a kernel module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    NotElf,
    Not64BitLittleEndian,
    Truncated(&'static str),
    NoModinfoSection,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::NotElf => write!(f, "not an ELF file (bad magic)"),
            ElfError::Not64BitLittleEndian => write!(f, "not a 64-bit little-endian ELF file"),
            ElfError::Truncated(what) => write!(f, "ELF file truncated or corrupt: {what}"),
            ElfError::NoModinfoSection => write!(f, "no .modinfo section: not a kernel module"),
        }
    }
}

impl std::error::Error for ElfError {}

/// The kernel treats `-` and `_` in module names as the same character.
pub fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// Bytes `[offset, offset + size)` of `data`, if they are all there.
fn slice_at(data: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    data.get(start..end)
}

/// Finds the `.modinfo` section of an ELF64 little-endian file (every x86_64/arm64 module).
pub fn modinfo_section(elf: &[u8]) -> Result<&[u8], ElfError> {
    const SECTION_HEADER_SIZE: usize = 64;
    const SHT_NOBITS: u32 = 8;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little endian.
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(ElfError::Not64BitLittleEndian);
    }
    let truncated = || ElfError::Truncated("ELF header");
    let section_headers_offset = read_u64(elf, 0x28).ok_or_else(truncated)?;
    let entry_size = read_u16(elf, 0x3a).ok_or_else(truncated)? as usize;
    let section_count = read_u16(elf, 0x3c).ok_or_else(truncated)? as usize;
    let names_index = read_u16(elf, 0x3e).ok_or_else(truncated)? as usize;
    if entry_size < SECTION_HEADER_SIZE || names_index >= section_count {
        return Err(ElfError::Truncated("section header table"));
    }
    let header = |index: usize| -> Result<&[u8], ElfError> {
        let offset = (index as u64)
            .checked_mul(entry_size as u64)
            .and_then(|rel| rel.checked_add(section_headers_offset))
            .ok_or(ElfError::Truncated("section header table"))?;
        slice_at(elf, offset, SECTION_HEADER_SIZE as u64)
            .ok_or(ElfError::Truncated("section header table"))
    };
    // Section header fields: sh_name@0 (u32), sh_type@4 (u32), sh_offset@24, sh_size@32.
    let section_bytes = |sh: &[u8]| -> Result<&[u8], ElfError> {
        let bad = || ElfError::Truncated("section contents");
        let offset = read_u64(sh, 24).ok_or_else(bad)?;
        let size = read_u64(sh, 32).ok_or_else(bad)?;
        slice_at(elf, offset, size).ok_or_else(bad)
    };
    let names = section_bytes(header(names_index)?)?;
    for index in 0..section_count {
        let sh = header(index)?;
        let name_offset = read_u32(sh, 0).ok_or(ElfError::Truncated("section header"))? as usize;
        let name = names
            .get(name_offset..)
            .and_then(|rest| rest.split(|&b| b == 0).next())
            .ok_or(ElfError::Truncated("section name table"))?;
        if name == b".modinfo" {
            if read_u32(sh, 4) == Some(SHT_NOBITS) {
                return Err(ElfError::Truncated(".modinfo has no contents"));
            }
            return section_bytes(sh);
        }
    }
    Err(ElfError::NoModinfoSection)
}

/// Names listed in a comma-separated `depends=` value, normalised, empty ones dropped.
fn split_depends(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(normalize_module_name)
}

/// Parses `softdep=` the way kmod does: `pre:` and `post:` switch the list the
/// following names go to; names before either keyword are ignored.
fn add_softdeps(value: &str, info: &mut ModInfo) {
    enum Mode {
        None,
        Pre,
        Post,
    }
    let mut mode = Mode::None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => mode = Mode::Pre,
            "post:" => mode = Mode::Post,
            name => match mode {
                Mode::None => {}
                Mode::Pre => info.softdep_pre.push(name.to_string()),
                Mode::Post => info.softdep_post.push(name.to_string()),
            },
        }
    }
}

/// Parses the contents of a `.modinfo` section. Unknown keys and non-UTF-8 entries
/// are ignored: only the keys above matter for loading.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(normalize_module_name(value.trim())),
            "depends" => info.depends.extend(split_depends(value)),
            "softdep" => add_softdeps(value, &mut info),
            "alias" => info.aliases.push(value.to_string()),
            _ => {}
        }
    }
    info
}

/// `.modinfo` of a module file's bytes, parsed.
pub fn read_modinfo(elf: &[u8]) -> Result<ModInfo, ElfError> {
    modinfo_section(elf).map(parse_modinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_ignores_padding_and_unknown_keys() {
        let section = b"license=GPL\0\0\0softdep=pre: crc32c post: foo-bar\0depends=virtio,virtio-ring,\0name=virtio_blk\0alias=virtio:d00000002v*\0\xff\xfe=x\0";
        let info = parse_modinfo(section);
        assert_eq!(info.name.as_deref(), Some("virtio_blk"));
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.softdep_pre, ["crc32c"]);
        assert_eq!(info.softdep_post, ["foo-bar"]);
        assert_eq!(info.aliases, ["virtio:d00000002v*"]);
    }

    #[test]
    fn softdep_names_before_a_keyword_are_ignored_like_kmod_does() {
        let info = parse_modinfo(b"softdep=sha512 pre: a b post: c\0");
        assert_eq!(info.softdep_pre, ["a", "b"]);
        assert_eq!(info.softdep_post, ["c"]);
    }

    #[test]
    fn rejects_non_elf_and_truncated_files_without_panicking() {
        assert_eq!(modinfo_section(b"hello"), Err(ElfError::NotElf));
        let mut header = b"\x7fELF\x01\x01".to_vec();
        assert_eq!(
            modinfo_section(&header),
            Err(ElfError::Not64BitLittleEndian)
        );
        header[4] = 2;
        assert!(matches!(
            modinfo_section(&header),
            Err(ElfError::Truncated(_))
        ));
        // Every prefix of a real-looking header must fail cleanly, never panic.
        let mut elf = [0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        elf[0x3a] = 64;
        elf[0x3c] = 3;
        for len in 0..elf.len() {
            assert!(modinfo_section(&elf[..len]).is_err());
        }
    }
}
