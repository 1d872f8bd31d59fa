//! The identity of a read-only lower: what the image itself carries, read
//! cheaply (metadata only, never the file data), so that a boot can tell that
//! the lower was replaced (a firmware upgrade or a rollback) since the last one.
//!
//! What is read, per filesystem (all offsets from the start of the device):
//!
//! | fs | UUID | hashed (SHA-256) |
//! |---|---|---|
//! | squashfs | none (the format has none) | the 96-byte superblock, then `[inode_table_start, bytes_used)`: the inode, directory, fragment, export, id and xattr tables, which squashfs 4.0 stores after all data blocks |
//! | erofs | `uuid` when not all zero | the 128-byte superblock (its checksum field zeroed), then every inode reachable from the root (the on-disk inode and its inline xattrs) and every directory's blocks, each once, in directory order |
//! | ext4 | `s_uuid` | the 1024-byte superblock with its mount bookkeeping zeroed (mount/write/check times, mount count, state, last-mounted path, kbytes written, checksum), then the group descriptor table |
//!
//! Plus `IMAGE_VERSION`, `VERSION_ID` and `BUILD_ID` from the image's
//! os-release. A content change that alters no size, block position, inode,
//! directory, timestamp or os-release field is not seen: reproducible builds
//! with a fixed time (`mksquashfs -all-time`, `mkfs.erofs -T`) that differ only
//! in a same-length rewrite of a file can hash the same. Real firmware builds
//! change `BUILD_ID` or sizes. See docs/upgrades.md.
//!
//! Everything here is pure over a [`ReadAt`] byte reader; `sys::lower_identity`
//! opens the device and the mounted lower's os-release.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

use super::sha256::{hex, Sha256};

/// The most metadata an identity hashes before giving up (a corrupt table
/// offset must not make a boot read a whole disk).
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// Read exactly `buf.len()` bytes at `offset`.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).ok();
        let end = start.and_then(|s| s.checked_add(buf.len()));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.len() => {
                buf.copy_from_slice(&self[s..e]);
                Ok(())
            }
            _ => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// The version fields of an os-release file that name a build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsVersion {
    pub image_version: Option<String>,
    pub version_id: Option<String>,
    pub build_id: Option<String>,
}

impl OsVersion {
    /// `IMAGE_VERSION`, else `VERSION_ID`, with `BUILD_ID` in brackets.
    pub fn describe(&self) -> String {
        let main = self
            .image_version
            .as_deref()
            .or(self.version_id.as_deref())
            .unwrap_or("unknown version");
        match &self.build_id {
            Some(b) => format!("{main} (build {b})"),
            None => main.to_string(),
        }
    }
}

/// Parse os-release (`KEY=value`, values optionally in single or double
/// quotes, `\` escapes inside double quotes; see os-release(5)). Unknown keys
/// and malformed lines are ignored.
pub fn parse_os_release(text: &str) -> OsVersion {
    let mut v = OsVersion::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(raw.trim());
        let value = (!value.is_empty()).then_some(value);
        match key.trim() {
            "IMAGE_VERSION" => v.image_version = value,
            "VERSION_ID" => v.version_id = value,
            "BUILD_ID" => v.build_id = value,
            _ => {}
        }
    }
    v
}

fn unquote(raw: &str) -> String {
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_string();
    }
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    raw.to_string()
}

/// The identity of one lower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerIdentity {
    /// `squashfs`, `erofs` or `ext4`.
    pub fstype: String,
    /// The filesystem UUID, as blkid prints it, when the format has a non-zero one.
    pub uuid: Option<String>,
    /// SHA-256 of the superblock and metadata listed in the module notes, hex.
    pub meta_sha256: String,
    /// How many bytes went into the hash.
    pub meta_bytes: u64,
    pub version: OsVersion,
}

impl LowerIdentity {
    /// One line for logs and `overlay-init status`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {} {}",
            self.fstype,
            self.version.describe(),
            &self.meta_sha256[..self.meta_sha256.len().min(16)]
        );
        if let Some(u) = &self.uuid {
            let _ = write!(s, " uuid {u}");
        }
        s
    }
}

/// The metadata hash of an image, from a reader over its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaHash {
    pub fstype: &'static str,
    pub uuid: Option<String>,
    pub sha256: String,
    pub bytes: u64,
}

/// Compute the metadata hash of a squashfs, erofs or ext4 image.
pub fn metadata_hash(dev: &(impl ReadAt + ?Sized)) -> Result<MetaHash> {
    let mut head = [0u8; 2048];
    dev.read_exact_at(&mut head[..4], 0)
        .context("read the first bytes")?;
    if &head[..4] == b"hsqs" {
        return squashfs(dev);
    }
    dev.read_exact_at(&mut head, 0)
        .context("read the superblock area")?;
    if le32(&head, 1024) == 0xE0F5_E1E2 {
        return erofs(dev);
    }
    if le16(&head, 1024 + 56) == 0xEF53 {
        return ext4(dev, &head[1024..2048]);
    }
    bail!("no squashfs, erofs or ext4 superblock")
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

struct Hasher<'a, R: ReadAt + ?Sized> {
    dev: &'a R,
    sha: Sha256,
    bytes: u64,
}

impl<'a, R: ReadAt + ?Sized> Hasher<'a, R> {
    fn new(dev: &'a R) -> Self {
        Hasher {
            dev,
            sha: Sha256::new(),
            bytes: 0,
        }
    }
    fn add(&mut self, data: &[u8]) -> Result<()> {
        self.bytes += data.len() as u64;
        if self.bytes > MAX_METADATA_BYTES {
            bail!("more than {MAX_METADATA_BYTES} bytes of metadata: corrupt offsets?");
        }
        self.sha.update(data);
        Ok(())
    }
    /// Hash `len` bytes at `offset`, read in 64 KiB pieces.
    fn add_range(&mut self, offset: u64, len: u64) -> Result<()> {
        if len > MAX_METADATA_BYTES {
            bail!("a metadata range of {len} bytes at {offset}: corrupt offsets?");
        }
        let mut buf = vec![0u8; 64 << 10];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.dev
                .read_exact_at(&mut buf[..n], offset + done)
                .with_context(|| format!("read {n} bytes at offset {}", offset + done))?;
            self.add(&buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
    fn finish(self, fstype: &'static str, uuid: Option<String>) -> MetaHash {
        MetaHash {
            fstype,
            uuid,
            sha256: hex(&self.sha.finish()),
            bytes: self.bytes,
        }
    }
}

fn squashfs(dev: &(impl ReadAt + ?Sized)) -> Result<MetaHash> {
    let mut sb = [0u8; 96];
    dev.read_exact_at(&mut sb, 0)
        .context("read the squashfs superblock")?;
    if (le16(&sb, 28), le16(&sb, 30)) != (4, 0) {
        bail!("squashfs version is not 4.0");
    }
    let inode_table = le64(&sb, 64);
    let bytes_used = le64(&sb, 40);
    if inode_table < 96 || inode_table > bytes_used {
        bail!("squashfs inode table at {inode_table} outside the image ({bytes_used} bytes used)");
    }
    let mut h = Hasher::new(dev);
    h.add(&sb)?;
    h.add_range(inode_table, bytes_used - inode_table)
        .context("hash the squashfs tables")?;
    Ok(h.finish("squashfs", None))
}

fn ext4(dev: &(impl ReadAt + ?Sized), sb: &[u8]) -> Result<MetaHash> {
    let mut sb = sb.to_vec();
    let uuid = uuid_string(&sb[104..120]);
    let log = le32(&sb, 24);
    if log > 6 {
        bail!("ext4 block size 1024<<{log} invalid");
    }
    let block_size = 1024u64 << log;
    let incompat = le32(&sb, 96);
    let is_64bit = incompat & 0x80 != 0;
    let meta_bg = incompat & 0x10 != 0;
    let blocks = u64::from(le32(&sb, 4))
        | if is_64bit {
            u64::from(le32(&sb, 0x150)) << 32
        } else {
            0
        };
    let first_data_block = u64::from(le32(&sb, 20));
    let per_group = u64::from(le32(&sb, 32));
    if per_group == 0 {
        bail!("ext4 blocks per group is 0");
    }
    let desc_size = if is_64bit {
        u64::from(le16(&sb, 254)).max(32)
    } else {
        32
    };
    // Mount bookkeeping changes without any change of content: zero it.
    for (off, len) in [
        (44, 4),    // s_mtime
        (48, 4),    // s_wtime
        (52, 2),    // s_mnt_count
        (58, 2),    // s_state
        (64, 4),    // s_lastcheck
        (136, 64),  // s_last_mounted
        (0x178, 8), // s_kbytes_written
        (0x274, 4), // s_{w,m,}time_hi, s_lastcheck_hi
        (0x3FC, 4), // s_checksum
    ] {
        sb[off..off + len].fill(0);
    }
    let mut h = Hasher::new(dev);
    h.add(&sb)?;
    let groups = (blocks.saturating_sub(first_data_block)).div_ceil(per_group);
    // With meta_bg the descriptors are spread over the disk; the first block
    // of them is what is read then.
    let table = if meta_bg {
        block_size
    } else {
        groups.saturating_mul(desc_size)
    };
    h.add_range((first_data_block + 1) * block_size, table)
        .context("hash the ext4 group descriptors")?;
    Ok(h.finish("ext4", uuid))
}

fn uuid_string(raw: &[u8]) -> Option<String> {
    if raw.iter().all(|&b| b == 0) {
        return None;
    }
    let h = hex(raw);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// erofs: read through a small block cache, since inodes are 32 or 64 bytes.
struct Blocks<'a, R: ReadAt + ?Sized> {
    dev: &'a R,
    size: u64,
    cache: HashMap<u64, Vec<u8>>,
}

impl<R: ReadAt + ?Sized> Blocks<'_, R> {
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let mut pos = offset;
        while out.len() < len {
            let block = pos / self.size;
            if !self.cache.contains_key(&block) {
                if self.cache.len() >= 256 {
                    self.cache.clear();
                }
                let mut buf = vec![0u8; self.size as usize];
                self.dev
                    .read_exact_at(&mut buf, block * self.size)
                    .with_context(|| format!("read erofs block {block}"))?;
                self.cache.insert(block, buf);
            }
            let data = &self.cache[&block];
            let start = (pos % self.size) as usize;
            let take = (len - out.len()).min(data.len() - start);
            out.extend_from_slice(&data[start..start + take]);
            pos += take as u64;
        }
        Ok(out)
    }
}

fn erofs(dev: &(impl ReadAt + ?Sized)) -> Result<MetaHash> {
    let mut sb = [0u8; 128];
    dev.read_exact_at(&mut sb, 1024)
        .context("read the erofs superblock")?;
    let blkszbits = sb[12];
    if !(9..=16).contains(&blkszbits) {
        bail!("erofs block size 2^{blkszbits} invalid");
    }
    let uuid = uuid_string(&sb[48..64]);
    let root_nid = u64::from(le16(&sb, 14));
    let meta_base = u64::from(le32(&sb, 40)) << blkszbits;
    let mut blocks = Blocks {
        dev,
        size: 1u64 << blkszbits,
        cache: HashMap::new(),
    };
    let mut h = Hasher::new(dev);
    // The superblock checksum covers the rest of block 0, which may hold
    // inodes: those are hashed by the walk; the derived checksum is not.
    let mut sb_hashed = sb;
    sb_hashed[4..8].fill(0);
    h.add(&sb_hashed)?;
    let mut seen = HashSet::new();
    let mut stack = vec![root_nid];
    while let Some(nid) = stack.pop() {
        if !seen.insert(nid) {
            continue;
        }
        let inode = erofs_inode(&mut blocks, meta_base, nid)
            .with_context(|| format!("erofs inode {nid}"))?;
        h.add(&inode.raw)?;
        if inode.mode & 0o170000 == 0o040000 {
            let data = erofs_dir_data(&mut blocks, &inode, meta_base, nid)
                .with_context(|| format!("erofs directory inode {nid}"))?;
            h.add(&data)?;
            let mut children = erofs_dirents(&data, blocks.size as usize)
                .with_context(|| format!("erofs directory inode {nid}"))?;
            // Depth first, in directory order.
            children.reverse();
            stack.extend(children);
        }
    }
    Ok(h.finish("erofs", uuid))
}

struct ErofsInode {
    /// The on-disk inode and its inline xattrs.
    raw: Vec<u8>,
    mode: u16,
    size: u64,
    layout: u16,
    raw_blkaddr: u32,
    /// Where the inline tail would start (after the inode and xattrs).
    tail_offset: u64,
}

fn erofs_inode<R: ReadAt + ?Sized>(
    b: &mut Blocks<'_, R>,
    base: u64,
    nid: u64,
) -> Result<ErofsInode> {
    let pos = base + nid * 32;
    let compact = b.read(pos, 32)?;
    let format = le16(&compact, 0);
    let extended = format & 1 == 1;
    let layout = (format >> 1) & 0x7;
    let xattr_count = le16(&compact, 2);
    let mode = le16(&compact, 4);
    let isize: u64 = if extended { 64 } else { 32 };
    let head = if extended { b.read(pos, 64)? } else { compact };
    let size = if extended {
        le64(&head, 8)
    } else {
        u64::from(le32(&head, 8))
    };
    let raw_blkaddr = le32(&head, 16);
    let xattr_len = if xattr_count == 0 {
        0
    } else {
        12 + (u64::from(xattr_count) - 1) * 4
    };
    let raw = b.read(pos, (isize + xattr_len) as usize)?;
    Ok(ErofsInode {
        raw,
        mode,
        size,
        layout,
        raw_blkaddr,
        tail_offset: pos + isize + xattr_len,
    })
}

fn erofs_dir_data<R: ReadAt + ?Sized>(
    b: &mut Blocks<'_, R>,
    inode: &ErofsInode,
    _base: u64,
    _nid: u64,
) -> Result<Vec<u8>> {
    if inode.size > MAX_METADATA_BYTES {
        bail!("directory of {} bytes", inode.size);
    }
    let bs = b.size;
    match inode.layout {
        // FLAT_PLAIN: all blocks at raw_blkaddr.
        0 => b.read(u64::from(inode.raw_blkaddr) * bs, inode.size as usize),
        // FLAT_INLINE: whole blocks at raw_blkaddr, the tail after the inode.
        2 => {
            let full = inode.size / bs * bs;
            let mut data = if full > 0 {
                b.read(u64::from(inode.raw_blkaddr) * bs, full as usize)?
            } else {
                Vec::new()
            };
            data.extend(b.read(inode.tail_offset, (inode.size - full) as usize)?);
            Ok(data)
        }
        other => bail!("directory data layout {other} not supported by the identity walk"),
    }
}

/// The child nids of a directory's data (without `.` and `..`).
fn erofs_dirents(data: &[u8], block_size: usize) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for block in data.chunks(block_size) {
        if block.len() < 12 {
            bail!("truncated directory block");
        }
        let first_nameoff = usize::from(le16(block, 8));
        if first_nameoff < 12 || first_nameoff % 12 != 0 || first_nameoff > block.len() {
            bail!("bad first name offset {first_nameoff}");
        }
        let count = first_nameoff / 12;
        for i in 0..count {
            let d = &block[i * 12..i * 12 + 12];
            let nid = le64(d, 0);
            let start = usize::from(le16(d, 8));
            let end = if i + 1 < count {
                usize::from(le16(block, (i + 1) * 12 + 8))
            } else {
                block[start.min(block.len())..]
                    .iter()
                    .position(|&c| c == 0)
                    .map_or(block.len(), |p| start + p)
            };
            let name = block.get(start..end).context("name offset out of range")?;
            if name != b"." && name != b".." {
                out.push(nid);
            }
        }
    }
    Ok(out)
}

// ---- the record in `.overlay-init/lower-identity` -------------------------

/// The file name of the record inside `.overlay-init/`.
pub const RECORD_NAME: &str = "lower-identity";

/// The identities of all lowers at one boot: the main lower, then each
/// `ovl.lower=` entry in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub main: LowerIdentity,
    pub extra: Vec<LowerIdentity>,
}

/// What was found in `.overlay-init/lower-identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// No file: the first boot on this upper (or one from before identities).
    Missing,
    /// A file that does not parse; the reason.
    Corrupt(String),
    Valid(IdentityRecord),
}

impl IdentityRecord {
    /// The stable text form: `key=value` lines; values escaped (`%XX` for
    /// bytes outside `!`..`~` and for `%`). One `layer=` line starts each layer.
    pub fn render(&self) -> String {
        let mut s = String::from("# overlay-init: the lowers seen at the last boot\nformat=1\n");
        for (name, id) in std::iter::once(("main".to_string(), &self.main)).chain(
            self.extra
                .iter()
                .enumerate()
                .map(|(i, id)| (format!("extra{i}"), id)),
        ) {
            let mut put = |k: &str, v: &str| {
                let _ = writeln!(s, "{k}={}", escape(v));
            };
            put("layer", &name);
            put("fstype", &id.fstype);
            if let Some(u) = &id.uuid {
                put("uuid", u);
            }
            put("meta-sha256", &id.meta_sha256);
            put("meta-bytes", &id.meta_bytes.to_string());
            for (k, v) in [
                ("image-version", &id.version.image_version),
                ("version-id", &id.version.version_id),
                ("build-id", &id.version.build_id),
            ] {
                if let Some(v) = v {
                    put(k, v);
                }
            }
        }
        s.push_str("end=1\n");
        s
    }

    /// Parse a record; never panics, whatever the bytes. A record that is
    /// truncated (no `end=1`), has no main layer, a layer without a hash or an
    /// unknown format is [`Recorded::Corrupt`]; unknown keys are ignored.
    pub fn parse(bytes: Option<&[u8]>) -> Recorded {
        let Some(bytes) = bytes else {
            return Recorded::Missing;
        };
        match parse_record(bytes) {
            Ok(r) => Recorded::Valid(r),
            Err(reason) => Recorded::Corrupt(reason),
        }
    }
}

fn parse_record(bytes: &[u8]) -> Result<IdentityRecord, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let mut layers: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut format_ok = false;
    let mut ended = false;
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: no '='", n + 1))?;
        let v = unescape(v).ok_or_else(|| format!("line {}: bad escape", n + 1))?;
        match k {
            "format" if v == "1" => format_ok = true,
            "format" => return Err(format!("unknown format {v:?}")),
            "end" => ended = true,
            "layer" => layers.push((v, HashMap::new())),
            _ => match layers.last_mut() {
                Some((_, map)) => {
                    map.insert(k.to_string(), v);
                }
                None if !format_ok => return Err("no format line".into()),
                None => {}
            },
        }
    }
    if !format_ok {
        return Err("no format line".into());
    }
    if !ended {
        return Err("truncated (no end line)".into());
    }
    let mut ids = Vec::new();
    for (i, (name, map)) in layers.into_iter().enumerate() {
        let expected = if i == 0 {
            "main".to_string()
        } else {
            format!("extra{}", i - 1)
        };
        if name != expected {
            return Err(format!("layer {name:?} where {expected:?} was expected"));
        }
        let get = |k: &str| map.get(k).cloned();
        let hash = get("meta-sha256").ok_or_else(|| format!("layer {name}: no meta-sha256"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("layer {name}: bad meta-sha256"));
        }
        ids.push(LowerIdentity {
            fstype: get("fstype").ok_or_else(|| format!("layer {name}: no fstype"))?,
            uuid: get("uuid"),
            meta_sha256: hash,
            meta_bytes: get("meta-bytes").and_then(|b| b.parse().ok()).unwrap_or(0),
            version: OsVersion {
                image_version: get("image-version"),
                version_id: get("version-id"),
                build_id: get("build-id"),
            },
        });
    }
    let mut ids = ids.into_iter();
    let main = ids.next().ok_or("no main layer")?;
    Ok(IdentityRecord {
        main,
        extra: ids.collect(),
    })
}

fn escape(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hexpair = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hexpair, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How the lowers of this boot relate to the recorded ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LowerChange {
    /// Nothing recorded yet.
    FirstBoot,
    /// The record is unreadable; the reason.
    Unknown(String),
    Unchanged,
    /// Which layers changed (`main`, `extra0`...), old and new record.
    Changed {
        layers: Vec<String>,
        old: Box<IdentityRecord>,
    },
}

/// Compare this boot's identities with the record.
pub fn compare(recorded: &Recorded, now: &IdentityRecord) -> LowerChange {
    let old = match recorded {
        Recorded::Missing => return LowerChange::FirstBoot,
        Recorded::Corrupt(r) => return LowerChange::Unknown(r.clone()),
        Recorded::Valid(old) => old,
    };
    let mut layers = Vec::new();
    if old.main != now.main {
        layers.push("main".to_string());
    }
    for i in 0..old.extra.len().max(now.extra.len()) {
        if old.extra.get(i) != now.extra.get(i) {
            layers.push(format!("extra{i}"));
        }
    }
    if layers.is_empty() {
        LowerChange::Unchanged
    } else {
        LowerChange::Changed {
            layers,
            old: Box::new(old.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hash_byte: char, version: &str) -> LowerIdentity {
        LowerIdentity {
            fstype: "squashfs".into(),
            uuid: None,
            meta_sha256: hash_byte.to_string().repeat(64),
            meta_bytes: 4096,
            version: OsVersion {
                image_version: None,
                version_id: Some(version.into()),
                build_id: Some("b 1=%\n".into()),
            },
        }
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let v = parse_os_release(
            "NAME=\"Demo\"\nVERSION_ID='2.1'\n# BUILD_ID=no\nBUILD_ID=\"a\\\"b\"\nIMAGE_VERSION=7\nbad line\n",
        );
        assert_eq!(v.version_id.as_deref(), Some("2.1"));
        assert_eq!(v.build_id.as_deref(), Some("a\"b"));
        assert_eq!(v.image_version.as_deref(), Some("7"));
        assert_eq!(v.describe(), "7 (build a\"b)");
        assert_eq!(parse_os_release("").describe(), "unknown version");
    }

    #[test]
    fn record_round_trips_with_awkward_values() {
        let mut extra = id('b', "x");
        extra.uuid = Some("0123abcd-0000-4000-8000-000000000001".into());
        let rec = IdentityRecord {
            main: id('a', "1"),
            extra: vec![extra],
        };
        let text = rec.render();
        assert_eq!(
            IdentityRecord::parse(Some(text.as_bytes())),
            Recorded::Valid(rec.clone())
        );
        // Every truncation is either the same record or corrupt, never another one.
        for cut in 0..text.len() {
            match IdentityRecord::parse(Some(&text.as_bytes()[..cut])) {
                Recorded::Corrupt(_) => {}
                Recorded::Valid(r) => assert_eq!(r, rec, "cut at {cut}"),
                Recorded::Missing => panic!("cut at {cut} read as missing"),
            }
        }
    }

    #[test]
    fn corrupt_records_are_reported_not_guessed() {
        assert_eq!(IdentityRecord::parse(None), Recorded::Missing);
        for bad in [
            &b"\xff\xfe"[..],
            b"",
            b"garbage\n",
            b"format=2\nend=1\n",
            b"format=1\nend=1\n",
            b"format=1\nlayer=main\nfstype=ext4\nmeta-sha256=abc\nend=1\n",
            b"format=1\nlayer=extra0\nfstype=ext4\nend=1\n",
        ] {
            assert!(
                matches!(IdentityRecord::parse(Some(bad)), Recorded::Corrupt(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn compare_names_the_changed_layers() {
        let one = IdentityRecord {
            main: id('a', "1"),
            extra: vec![],
        };
        let two = IdentityRecord {
            main: id('b', "2"),
            extra: vec![id('c', "x")],
        };
        assert_eq!(compare(&Recorded::Missing, &one), LowerChange::FirstBoot);
        assert_eq!(
            compare(&Recorded::Valid(one.clone()), &one),
            LowerChange::Unchanged
        );
        match compare(&Recorded::Valid(one.clone()), &two) {
            LowerChange::Changed { layers, old } => {
                assert_eq!(layers, ["main", "extra0"]);
                assert_eq!(*old, one);
            }
            other => panic!("{other:?}"),
        }
        // A rollback is a change like any other.
        assert!(matches!(
            compare(&Recorded::Valid(two), &one),
            LowerChange::Changed { .. }
        ));
        assert!(matches!(
            compare(&Recorded::Corrupt("x".into()), &one),
            LowerChange::Unknown(_)
        ));
    }

    #[test]
    fn real_images_hash_and_mutations_never_panic() {
        let fixtures: [(&str, &[u8]); 3] = [
            (
                "squashfs",
                include_bytes!("../../tests/fixtures/probe/squashfs.img"),
            ),
            (
                "erofs",
                include_bytes!("../../tests/fixtures/probe/erofs.img"),
            ),
            (
                "ext4",
                include_bytes!("../../tests/fixtures/probe/ext4.img"),
            ),
        ];
        let mut rng = crate::test_rng::XorShift::new(0x5eed_1de7);
        for (fstype, image) in fixtures {
            let base = metadata_hash(image).unwrap_or_else(|e| panic!("{fstype}: {e:#}"));
            assert_eq!(base.fstype, fstype);
            assert!(
                base.bytes > 0 && base.bytes <= image.len() as u64,
                "{fstype}: {base:?}"
            );
            for _ in 0..2000 {
                let mutated = rng.mutate(image, 8192);
                let _ = metadata_hash(&mutated);
            }
        }
    }

    #[test]
    fn unknown_bytes_are_not_an_identity() {
        assert!(metadata_hash(&vec![0u8; 4096]).is_err());
        assert!(metadata_hash(&b"hsqs"[..]).is_err());
    }

    #[test]
    fn squashfs_hash_covers_the_tables_not_the_data() {
        // A fake squashfs: superblock, "data" at 96..200, tables at 200..300.
        let mut img = vec![0u8; 300];
        img[..4].copy_from_slice(b"hsqs");
        img[28..30].copy_from_slice(&4u16.to_le_bytes());
        img[40..48].copy_from_slice(&300u64.to_le_bytes());
        img[64..72].copy_from_slice(&200u64.to_le_bytes());
        let base = metadata_hash(&img).unwrap();
        assert_eq!(base.bytes, 96 + 100);
        let mut data_changed = img.clone();
        data_changed[150] = 1;
        assert_eq!(metadata_hash(&data_changed).unwrap(), base);
        let mut table_changed = img.clone();
        table_changed[250] = 1;
        assert_ne!(metadata_hash(&table_changed).unwrap().sha256, base.sha256);
        let mut corrupt = img.clone();
        corrupt[64..72].copy_from_slice(&400u64.to_le_bytes());
        assert!(metadata_hash(&corrupt).is_err());
    }
}
