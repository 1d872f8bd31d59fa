//! The initramfs builder's core: module dependency resolution and the cpio writer.
//!
//! [`assemble`] is pure (bytes in, archive out); [`build`] reads the inputs from disk
//! for the `mkinitramfs` binary.

pub mod cpio;
pub mod modinfo;
pub mod resolve;
pub mod tree;

use crate::modindex::{ModuleIndex, INDEX_PATH};
use anyhow::{bail, Context, Result};
use cpio::{Archive, EntryKind};
use resolve::Resolution;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A module's file as it goes into the initramfs.
#[derive(Debug, Clone)]
pub struct ModuleBlob {
    pub name: String,
    /// File name under the index directory, keeping its suffix (`.ko`, `.ko.xz`, `.ko.zst`).
    pub file_name: String,
    pub data: Vec<u8>,
    pub depends: Vec<String>,
}

/// An extra file (`--file SRC:DEST`).
#[derive(Debug, Clone)]
pub struct ExtraFile {
    pub dest: String,
    pub data: Vec<u8>,
    pub permissions: u32,
}

/// The directory holding the index and the modules.
fn index_dir() -> &'static str {
    INDEX_PATH.rsplit_once('/').map_or("/", |(dir, _)| dir)
}

/// The uncompressed archive: `/init`, `/dev/console`, modules (in load order) with
/// their index, and extra files.
pub fn assemble(init: Vec<u8>, modules: Vec<ModuleBlob>, files: Vec<ExtraFile>) -> Result<Archive> {
    let mut archive = Archive::default();
    archive.add("/init", EntryKind::File(init), 0o755)?;
    archive.add(
        "/dev/console",
        EntryKind::CharDevice { major: 5, minor: 1 },
        0o600,
    )?;
    // Mount points the init needs before anything else exists.
    for dir in ["/proc", "/sys", "/run"] {
        archive.add(dir, EntryKind::Directory, 0o755)?;
    }
    let mut index = ModuleIndex::default();
    for module in modules {
        index
            .push(
                &module.name,
                &module.file_name,
                module.depends.iter().map(String::as_str),
            )
            .map_err(anyhow::Error::msg)?;
        let dest = format!("{}/{}", index_dir(), module.file_name);
        archive.add(&dest, EntryKind::File(module.data), 0o644)?;
    }
    archive.add(
        INDEX_PATH,
        EntryKind::File(index.render().into_bytes()),
        0o644,
    )?;
    for file in files {
        archive
            .add(&file.dest, EntryKind::File(file.data), file.permissions)
            .with_context(|| format!("adding extra file {}", file.dest))?;
    }
    Ok(archive)
}

/// gzip with no name and mtime 0 in the header, so equal input gives equal output.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3) // Unix, whatever the host
        .write(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// What `mkinitramfs` was asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub init: PathBuf,
    pub module_tree: PathBuf,
    /// Names to resolve (defaults plus extras, as the caller chose).
    pub module_names: Vec<String>,
    /// `(source, destination)` pairs.
    pub files: Vec<(PathBuf, String)>,
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub resolution: Resolution,
    /// `(name, bytes)` of each module in load order.
    pub module_sizes: Vec<(String, u64)>,
    pub init_size: u64,
    pub cpio_size: u64,
    pub gzip: Vec<u8>,
}

/// Parses `SRC:DEST` (DEST absolute; SRC may itself contain `:`, DEST may not).
pub fn parse_file_spec(spec: &str) -> Result<(PathBuf, String)> {
    let Some((source, dest)) = spec.rsplit_once(':') else {
        bail!("--file `{spec}`: expected SRC:DEST, e.g. /bin/busybox:/bin/busybox");
    };
    if source.is_empty() || !dest.starts_with('/') || dest.len() < 2 {
        bail!("--file `{spec}`: SRC must not be empty and DEST must be an absolute path inside the initramfs");
    }
    Ok((PathBuf::from(source), dest.to_string()))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Reads everything from disk, resolves modules, assembles and compresses.
pub fn build(request: &BuildRequest) -> Result<BuildOutput> {
    let init = read(&request.init, "the init binary")?;
    let init_size = init.len() as u64;
    let mut tree = tree::FsModuleTree::open(&request.module_tree)?;
    let resolution = resolve::resolve(&mut tree, &request.module_names)
        .with_context(|| format!("resolving modules in {}", request.module_tree.display()))?;
    let mut modules = Vec::new();
    let mut module_sizes = Vec::new();
    for module in &resolution.modules {
        let data = read(&module.path, "module")?;
        module_sizes.push((module.name.clone(), data.len() as u64));
        let file_name = module
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        modules.push(ModuleBlob {
            name: module.name.clone(),
            file_name,
            data,
            depends: module.depends.clone(),
        });
    }
    let mut files = Vec::new();
    for (source, dest) in &request.files {
        use std::os::unix::fs::PermissionsExt;
        let metadata = std::fs::metadata(source)
            .with_context(|| format!("stat extra file {}", source.display()))?;
        if !metadata.is_file() {
            bail!("extra file {} is not a regular file", source.display());
        }
        let data = read(source, "extra file")?;
        files.push(ExtraFile {
            dest: dest.clone(),
            data,
            permissions: metadata.permissions().mode() & 0o7777,
        });
    }
    let cpio = assemble(init, modules, files)?.to_newc();
    Ok(BuildOutput {
        resolution,
        module_sizes,
        init_size,
        cpio_size: cpio.len() as u64,
        gzip: gzip(&cpio),
    })
}

#[cfg(test)]
mod tests;
