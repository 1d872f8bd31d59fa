//! The module index the initramfs carries: which modules to load, in which order.
//!
//! Written by the builder, read by the init. A small text file:
//!
//! ```text
//! # overlay-init module index v1
//! virtio_ring virtio_ring.ko
//! virtio virtio.ko virtio_ring
//! virtio_blk virtio_blk.ko virtio virtio_ring
//! ```
//!
//! One module per line, in load order: its name, its file (relative to the index's
//! directory, no `..`), then the names of the modules it needs, each of which must be
//! on an earlier line. So the order alone is a valid sequential load order, and the
//! dependency lists let the init load independent modules at the same time. Lines
//! starting with `#` after the header, and blank lines, are ignored.

use std::fmt;
use std::path::{Component, Path};

/// Where the index lives inside the initramfs.
pub const INDEX_PATH: &str = "/lib/modules/overlay-init.index";
/// The first line of every index; a new format gets a new version.
pub const HEADER: &str = "# overlay-init module index v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// Relative to the directory holding the index.
    pub path: String,
    /// Positions of earlier entries this one needs.
    pub depends: Vec<usize>,
}

impl IndexEntry {
    /// Compressed modules need `MODULE_INIT_COMPRESSED_FILE` and kernel support.
    pub fn is_compressed(&self) -> bool {
        [".xz", ".zst", ".gz"]
            .iter()
            .any(|suffix| self.path.ends_with(suffix))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleIndex {
    pub entries: Vec<IndexEntry>,
}

/// A problem with an index or an entry; `line` is 1-based, 0 when building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "module index: {}", self.reason)
        } else {
            write!(f, "module index line {}: {}", self.line, self.reason)
        }
    }
}

impl std::error::Error for IndexError {}

fn is_valid_word(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_graphic())
}

fn check_path(path: &str) -> Result<(), String> {
    if !is_valid_word(path) {
        return Err(format!(
            "module path `{path}` is empty or has spaces or control characters"
        ));
    }
    let all_normal = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !all_normal {
        return Err(format!(
            "module path `{path}` must be relative and must not contain `..`"
        ));
    }
    Ok(())
}

impl ModuleIndex {
    pub fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|entry| entry.name == name)
    }

    fn push_at_line<'a>(
        &mut self,
        line: usize,
        name: &str,
        path: &str,
        depends: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), IndexError> {
        let error = |reason: String| IndexError { line, reason };
        if !is_valid_word(name) {
            return Err(error(format!(
                "module name `{name}` is empty or has spaces or control characters"
            )));
        }
        if self.position(name).is_some() {
            return Err(error(format!("module `{name}` is listed twice")));
        }
        check_path(path).map_err(error)?;
        let mut positions = Vec::new();
        for dependency in depends {
            let position = self.position(dependency).ok_or_else(|| {
                error(format!(
                    "module `{name}` depends on `{dependency}`, which is not listed before it"
                ))
            })?;
            if !positions.contains(&position) {
                positions.push(position);
            }
        }
        self.entries.push(IndexEntry {
            name: name.to_string(),
            path: path.to_string(),
            depends: positions,
        });
        Ok(())
    }

    /// Appends a module; its dependencies must already be in the index.
    pub fn push<'a>(
        &mut self,
        name: &str,
        path: &str,
        depends: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), IndexError> {
        self.push_at_line(0, name, path, depends)
    }

    /// Positions of the named modules and everything they need, in index
    /// (load) order. Unknown names are ignored: they may be built in.
    pub fn closure(&self, names: &[&str]) -> Vec<usize> {
        let mut wanted = vec![false; self.entries.len()];
        let mut stack: Vec<usize> = names.iter().filter_map(|n| self.position(n)).collect();
        while let Some(position) = stack.pop() {
            if !std::mem::replace(&mut wanted[position], true) {
                stack.extend(&self.entries[position].depends);
            }
        }
        (0..self.entries.len()).filter(|&p| wanted[p]).collect()
    }

    /// The modules to load at once, in load order: every module that nothing
    /// else needs (the ones asked for), except the `on_demand` ones, with all
    /// they need. A module only an on-demand one needs waits with it.
    pub fn eager(&self, on_demand: &[&str]) -> Vec<usize> {
        let mut needed = vec![false; self.entries.len()];
        for entry in &self.entries {
            for &d in &entry.depends {
                needed[d] = true;
            }
        }
        let roots: Vec<&str> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(p, e)| !needed[*p] && !on_demand.contains(&e.name.as_str()))
            .map(|(_, e)| e.name.as_str())
            .collect();
        self.closure(&roots)
    }

    /// The index restricted to `positions` (ascending), dependencies renumbered;
    /// a dependency outside the subset is dropped (it is loaded already).
    pub fn subset(&self, positions: &[usize]) -> ModuleIndex {
        let renumber = |old: usize| positions.iter().position(|&p| p == old);
        let entries = positions
            .iter()
            .map(|&p| {
                let entry = &self.entries[p];
                IndexEntry {
                    name: entry.name.clone(),
                    path: entry.path.clone(),
                    depends: entry.depends.iter().filter_map(|&d| renumber(d)).collect(),
                }
            })
            .collect();
        ModuleIndex { entries }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = String::from(HEADER);
        text.push('\n');
        for entry in &self.entries {
            text.push_str(&entry.name);
            text.push(' ');
            text.push_str(&entry.path);
            for &dependency in &entry.depends {
                text.push(' ');
                text.push_str(&self.entries[dependency].name);
            }
            text.push('\n');
        }
        text
    }

    /// Reads an index; any malformed line is an error naming the line. Never panics.
    pub fn parse(text: &str) -> Result<ModuleIndex, IndexError> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, first)) if first.trim_end() == HEADER => {}
            _ => {
                return Err(IndexError {
                    line: 1,
                    reason: format!("missing header `{HEADER}`"),
                })
            }
        }
        let mut index = ModuleIndex::default();
        for (number, line) in lines {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_ascii_whitespace();
            let name = words.next().unwrap_or_default();
            let path = words.next().ok_or_else(|| IndexError {
                line: number + 1,
                reason: format!("module `{name}` has no file path"),
            })?;
            index.push_at_line(number + 1, name, path, words)?;
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModuleIndex {
        let mut index = ModuleIndex::default();
        index.push("virtio_ring", "virtio_ring.ko", []).unwrap();
        index.push("virtio", "virtio.ko", ["virtio_ring"]).unwrap();
        index
            .push("virtio_blk", "virtio_blk.ko.xz", ["virtio", "virtio_ring"])
            .unwrap();
        index.push("overlay", "overlay.ko", []).unwrap();
        index
    }

    #[test]
    fn round_trips_through_text() {
        let index = sample();
        let text = index.render();
        assert_eq!(
            text,
            "# overlay-init module index v1\nvirtio_ring virtio_ring.ko\nvirtio virtio.ko virtio_ring\n\
             virtio_blk virtio_blk.ko.xz virtio virtio_ring\noverlay overlay.ko\n"
        );
        let parsed = ModuleIndex::parse(&text).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(parsed.entries[2].depends, [1, 0]);
        assert!(parsed.entries[2].is_compressed());
        assert!(!parsed.entries[0].is_compressed());
    }

    #[test]
    fn tolerates_comments_blank_lines_and_extra_spaces() {
        let text = "# overlay-init module index v1\n\n# comment\n  a   a.ko \nb\tb.ko\ta\n";
        let parsed = ModuleIndex::parse(text).unwrap();
        assert_eq!(parsed.entries.len(), 2);
        assert_eq!(parsed.entries[1].depends, [0]);
    }

    #[test]
    fn rejects_bad_input_naming_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "missing header"),
            ("not an index\n", 1, "missing header"),
            ("# overlay-init module index v1\na\n", 2, "no file path"),
            (
                "# overlay-init module index v1\na a.ko b\nb b.ko\n",
                2,
                "not listed before",
            ),
            (
                "# overlay-init module index v1\na a.ko\na a2.ko\n",
                3,
                "listed twice",
            ),
            (
                "# overlay-init module index v1\na /lib/a.ko\n",
                2,
                "relative",
            ),
            ("# overlay-init module index v1\na ../a.ko\n", 2, "relative"),
            (
                "# overlay-init module index v1\na a.ko a\n",
                2,
                "not listed before",
            ),
        ];
        for (text, line, reason) in cases {
            let error = ModuleIndex::parse(text).unwrap_err();
            assert_eq!(error.line, *line, "{text:?}: {error}");
            assert!(error.reason.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn never_panics_on_any_prefix_or_byte_flip() {
        let text = sample().render();
        for end in 0..=text.len() {
            let _ = ModuleIndex::parse(&text[..end]);
        }
        let bytes = text.as_bytes();
        for at in 0..bytes.len() {
            for replacement in [b' ', b'\n', b'#', b'.', b'/', 0u8] {
                let mut changed = bytes.to_vec();
                changed[at] = replacement;
                if let Ok(changed) = std::str::from_utf8(&changed) {
                    let _ = ModuleIndex::parse(changed);
                }
            }
        }
    }

    #[test]
    fn writer_refuses_what_the_parser_would_refuse() {
        let mut index = ModuleIndex::default();
        assert!(index.push("has space", "a.ko", []).is_err());
        assert!(index.push("a", "", []).is_err());
        assert!(index.push("a", "a.ko", ["later"]).is_err());
        assert!(index.entries.is_empty());
    }

    #[test]
    fn closure_and_eager_sets() {
        let mut index = ModuleIndex::default();
        index.push("virtio_ring", "a.ko", []).unwrap();
        index.push("virtio_blk", "b.ko", ["virtio_ring"]).unwrap();
        index.push("libcrc32c", "c.ko", []).unwrap();
        index.push("erofs", "d.ko", ["libcrc32c"]).unwrap();
        index.push("squashfs", "e.ko", []).unwrap();
        index.push("needs_crc", "f.ko", ["libcrc32c"]).unwrap();
        assert_eq!(index.closure(&["erofs"]), vec![2, 3]);
        assert_eq!(index.closure(&["virtio_blk", "nope"]), vec![0, 1]);
        assert!(index.closure(&[]).is_empty());
        // erofs and squashfs wait; libcrc32c loads now because needs_crc wants it.
        assert_eq!(index.eager(&["erofs", "squashfs"]), vec![0, 1, 2, 5]);
        assert_eq!(index.eager(&[]), vec![0, 1, 2, 3, 4, 5]);
        // Without needs_crc, libcrc32c waits for erofs.
        assert_eq!(index.eager(&["erofs", "squashfs", "needs_crc"]), vec![0, 1]);
        let sub = index.subset(&[2, 3]);
        assert_eq!(sub.entries[0].name, "libcrc32c");
        assert_eq!(sub.entries[1].depends, vec![0]);
        let sub = index.subset(&[3]);
        assert!(sub.entries[0].depends.is_empty());
    }
}
