//! A kernel module tree on disk (`.../lib/modules/VERSION`) as a [`ModuleCatalog`].
//!
//! Host-side reading for the builder; the resolver itself stays pure.

use super::decompress::{decompress, Compression};
use super::modinfo::{normalize_module_name, read_modinfo};
use super::resolve::{AliasProviders, Lookup, ModuleCatalog, ModuleFile};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module file suffixes, longest first so `.ko.xz` is not taken for `.ko`.
const MODULE_SUFFIXES: &[&str] = &[".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// The module name a file name stands for (`virtio-pci.ko.xz` -> `virtio_pci`).
pub fn module_name_of_file(file_name: &str) -> Option<String> {
    MODULE_SUFFIXES
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))
        .filter(|stem| !stem.is_empty())
        .map(normalize_module_name)
}

pub struct FsModuleTree {
    root: PathBuf,
    /// Module name -> file, relative to `root`.
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    builtin_aliases: BTreeSet<String>,
    /// Alias -> module names, built on first need from every readable module.
    aliases: Option<BTreeMap<String, Vec<String>>>,
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading module directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading module directory {}", dir.display()))?;
        let file_type = entry
            .file_type()
            .with_context(|| format!("stat {}", entry.path().display()))?;
        if file_type.is_dir() {
            walk(root, &entry.path(), found)?;
        } else if module_name_of_file(&entry.file_name().to_string_lossy()).is_some() {
            found.push(
                entry
                    .path()
                    .strip_prefix(root)
                    .unwrap_or(&entry.path())
                    .to_path_buf(),
            );
        }
    }
    Ok(())
}

impl FsModuleTree {
    /// Indexes the tree at `root`; needs `modules.builtin` (which every kernel install has).
    pub fn open(root: &Path) -> Result<Self> {
        let builtin_list = root.join("modules.builtin");
        let builtin_text = std::fs::read_to_string(&builtin_list).with_context(|| {
            format!(
                "reading {}: is {} a kernel module tree (.../lib/modules/VERSION)?",
                builtin_list.display(),
                root.display()
            )
        })?;
        let builtin = builtin_text
            .lines()
            .filter_map(|line| Path::new(line.trim()).file_name())
            .filter_map(|name| module_name_of_file(&name.to_string_lossy()))
            .collect();
        // Optional: lets soft dependencies on aliases of built-in code (crc32c) resolve.
        let builtin_aliases = match std::fs::read(root.join("modules.builtin.modinfo")) {
            Ok(bytes) => bytes
                .split(|&b| b == 0)
                .filter_map(|entry| std::str::from_utf8(entry).ok())
                .filter_map(|entry| {
                    entry
                        .split_once(".alias=")
                        .map(|(_, alias)| alias.to_string())
                })
                .collect(),
            Err(_) => BTreeSet::new(),
        };
        let mut found = Vec::new();
        walk(root, root, &mut found)?;
        found.sort();
        let mut files = BTreeMap::new();
        for path in found {
            let name = module_name_of_file(&path.file_name().unwrap_or_default().to_string_lossy())
                .unwrap_or_default();
            // Sorted walk: the first file of a name wins, deterministically.
            files.entry(name).or_insert(path);
        }
        Ok(FsModuleTree {
            root: root.to_path_buf(),
            files,
            builtin,
            builtin_aliases,
            aliases: None,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read_file_modinfo(&self, relative: &Path) -> Result<super::modinfo::ModInfo> {
        let path = self.root.join(relative);
        let elf = read_module(&path)?;
        read_modinfo(&elf).with_context(|| format!("reading .modinfo of {}", path.display()))
    }
}

/// A module file's ELF bytes, decompressed when its name says it is compressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    let compression =
        Compression::of_file_name(&path.file_name().unwrap_or_default().to_string_lossy());
    if compression == Compression::None {
        return Ok(bytes);
    }
    decompress(compression, &bytes)
        .with_context(|| format!("decompressing module {}", path.display()))
}

impl ModuleCatalog for FsModuleTree {
    fn lookup(&mut self, name: &str) -> Result<Lookup> {
        if self.builtin.contains(name) {
            return Ok(Lookup::Builtin);
        }
        let Some(relative) = self.files.get(name) else {
            return Ok(Lookup::Missing);
        };
        let info = self.read_file_modinfo(relative)?;
        Ok(Lookup::Module(ModuleFile {
            name: name.to_string(),
            path: self.root.join(relative),
            info,
        }))
    }

    fn alias_providers(&mut self, alias: &str) -> Result<AliasProviders> {
        if self.builtin_aliases.contains(alias) {
            return Ok(AliasProviders::Builtin);
        }
        if self.aliases.is_none() {
            let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, relative) in &self.files {
                // An unreadable module cannot provide a soft dependency, which can do without it.
                let Ok(info) = self.read_file_modinfo(relative) else {
                    continue;
                };
                for module_alias in info.aliases {
                    aliases.entry(module_alias).or_default().push(name.clone());
                }
            }
            self.aliases = Some(aliases);
        }
        let providers = self
            .aliases
            .as_ref()
            .and_then(|map| map.get(alias))
            .cloned()
            .unwrap_or_default();
        Ok(AliasProviders::Modules(providers))
    }
}
