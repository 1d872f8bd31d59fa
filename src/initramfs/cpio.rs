//! A deterministic newc ("070701") cpio writer, and a reader for checking its output.
//!
//! Entries are sorted by path (a parent sorts before its children), every parent
//! directory is present, owners are root, mtimes are 0 and inode numbers count up
//! from 1 in that order: the same entries always give the same bytes.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    Symlink(String),
}

/// An entry: kind plus permission bits (`0o755`, without the file-type bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub permissions: u32,
}

/// The archive being built, keyed by path without a leading `/`.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// `"/lib//modules/"` -> `"lib/modules"`; refuses `.`/`..` and empty paths.
fn normalize_path(path: &str) -> Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|part| *part == "." || *part == "..") {
        bail!("invalid path in archive: `{path}` (must name a file, without `.` or `..`)");
    }
    Ok(parts.join("/"))
}

impl Archive {
    /// Adds an entry, creating missing parent directories (mode 0755). Adding a
    /// path twice, or a path under something that is not a directory, is an error.
    pub fn add(&mut self, path: &str, kind: EntryKind, permissions: u32) -> Result<()> {
        let path = normalize_path(path)?;
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                Some(Entry {
                    kind: EntryKind::Directory,
                    ..
                }) => {}
                Some(_) => bail!("cannot add /{path}: /{parent} is not a directory"),
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            kind: EntryKind::Directory,
                            permissions: 0o755,
                        },
                    );
                }
            }
        }
        match self.entries.get(&path) {
            // An explicit directory may restate one that was implied by a child.
            Some(Entry {
                kind: EntryKind::Directory,
                ..
            }) if kind == EntryKind::Directory => {}
            Some(_) => bail!("/{path} is added to the initramfs twice"),
            None => {}
        }
        self.entries.insert(
            path,
            Entry {
                kind,
                permissions: permissions & 0o7777,
            },
        );
        Ok(())
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries
            .iter()
            .map(|(path, entry)| (path.as_str(), entry))
    }

    /// The newc bytes, ending with the trailer and padded to 512 bytes.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (inode, (path, entry)) in self.entries.iter().enumerate() {
            let (type_bits, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match &entry.kind {
                EntryKind::Directory => (S_IFDIR, &[], 2, (0, 0)),
                EntryKind::File(data) => (S_IFREG, data, 1, (0, 0)),
                EntryKind::CharDevice { major, minor } => (S_IFCHR, &[], 1, (*major, *minor)),
                EntryKind::Symlink(target) => (S_IFLNK, target.as_bytes(), 1, (0, 0)),
            };
            let header = Header {
                inode: inode as u32 + 1,
                mode: type_bits | entry.permissions,
                nlink,
                rdev,
            };
            write_record(&mut out, &header, path, data);
        }
        write_record(
            &mut out,
            &Header {
                inode: 0,
                mode: 0,
                nlink: 1,
                rdev: (0, 0),
            },
            TRAILER,
            &[],
        );
        out.resize(out.len().next_multiple_of(512), 0);
        out
    }
}

struct Header {
    inode: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn write_record(out: &mut Vec<u8>, header: &Header, name: &str, data: &[u8]) {
    out.extend_from_slice(MAGIC);
    let fields = [
        header.inode,
        header.mode,
        0, // uid
        0, // gid
        header.nlink,
        0, // mtime
        data.len() as u32,
        0, // dev major
        0, // dev minor
        header.rdev.0,
        header.rdev.1,
        name.len() as u32 + 1, // with the NUL
        0,                     // check (newc has none)
    ];
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// One record read back from a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    pub path: String,
    pub inode: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Reads a newc archive up to its trailer (which is not returned).
pub fn parse_newc(bytes: &[u8]) -> Result<Vec<ParsedEntry>> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let header = bytes
            .get(at..at + 110)
            .context("cpio archive truncated in a header")?;
        if &header[..6] != MAGIC {
            bail!("bad cpio magic at offset {at}");
        }
        let record_start = at;
        let field = |index: usize| -> Result<u32> {
            let hex = std::str::from_utf8(&header[6 + index * 8..14 + index * 8])?;
            u32::from_str_radix(hex, 16)
                .with_context(|| format!("bad cpio header field at offset {record_start}"))
        };
        let name_size = field(11)? as usize;
        let data_size = field(6)? as usize;
        let name_start = at + 110;
        let name = bytes
            .get(name_start..name_start + name_size.saturating_sub(1))
            .context("cpio archive truncated in a name")?;
        let name = String::from_utf8(name.to_vec()).context("cpio name is not UTF-8")?;
        let data_start = (name_start + name_size).next_multiple_of(4);
        let data = bytes
            .get(data_start..data_start + data_size)
            .context("cpio archive truncated in data")?;
        at = (data_start + data_size).next_multiple_of(4);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(ParsedEntry {
            path: name,
            inode: field(0)?,
            mode: field(1)?,
            uid: field(2)?,
            gid: field(3)?,
            mtime: field(5)?,
            rdev: (field(9)?, field(10)?),
            data: data.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_parents_sorted_with_fixed_metadata_and_reads_back() {
        let mut archive = Archive::default();
        archive
            .add("/lib/modules/b.ko", EntryKind::File(b"bb".to_vec()), 0o644)
            .unwrap();
        archive
            .add("/init", EntryKind::File(b"#!init".to_vec()), 0o755)
            .unwrap();
        archive
            .add(
                "/dev/console",
                EntryKind::CharDevice { major: 5, minor: 1 },
                0o600,
            )
            .unwrap();
        archive
            .add("/lib-x", EntryKind::Symlink("lib".into()), 0o777)
            .unwrap();
        let bytes = archive.to_newc();
        assert_eq!(bytes.len() % 512, 0);
        let parsed = parse_newc(&bytes).unwrap();
        let paths: Vec<&str> = parsed.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib-x",
                "lib/modules",
                "lib/modules/b.ko"
            ]
        );
        for (position, entry) in parsed.iter().enumerate() {
            assert_eq!(
                (entry.inode, entry.uid, entry.gid, entry.mtime),
                (position as u32 + 1, 0, 0, 0)
            );
        }
        assert_eq!(parsed[0].mode, 0o040755);
        assert_eq!((parsed[1].mode, parsed[1].rdev), (0o020600, (5, 1)));
        assert_eq!(
            (parsed[2].mode, parsed[2].data.as_slice()),
            (0o100755, b"#!init".as_slice())
        );
        assert_eq!(
            (parsed[4].mode, parsed[4].data.as_slice()),
            (0o120777, b"lib".as_slice())
        );
        assert_eq!(parsed[6].data, b"bb");
    }

    #[test]
    fn refuses_duplicates_bad_paths_and_files_as_parents() {
        let mut archive = Archive::default();
        archive
            .add("/init", EntryKind::File(vec![]), 0o755)
            .unwrap();
        assert!(archive.add("init", EntryKind::File(vec![]), 0o755).is_err());
        assert!(archive
            .add("/init/x", EntryKind::File(vec![]), 0o644)
            .is_err());
        assert!(archive
            .add("/a/../b", EntryKind::File(vec![]), 0o644)
            .is_err());
        assert!(archive.add("/", EntryKind::Directory, 0o755).is_err());
        archive
            .add("/etc/x", EntryKind::File(vec![]), 0o644)
            .unwrap();
        archive.add("/etc", EntryKind::Directory, 0o700).unwrap();
        let etc = archive
            .entries()
            .find(|(path, _)| *path == "etc")
            .unwrap()
            .1;
        assert_eq!(etc.permissions, 0o700);
    }

    #[test]
    fn reader_rejects_truncation() {
        let mut archive = Archive::default();
        archive
            .add("/a", EntryKind::File(vec![1; 10]), 0o644)
            .unwrap();
        let bytes = archive.to_newc();
        for end in [0, 50, 112, 120, 124] {
            assert!(parse_newc(&bytes[..end]).is_err(), "prefix of {end} bytes");
        }
    }
}
