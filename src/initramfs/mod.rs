//! The initramfs builder's core: module dependency resolution and the cpio writer.
//!
//! [`assemble`] is pure (bytes in, archive out); [`build`] reads the inputs from disk
//! for the `overlay-init-mkinitramfs` binary.

pub mod arch;
pub mod cpio;
pub mod decompress;
pub mod elf;
pub mod modinfo;
pub mod presets;
pub mod resolve;
pub mod tree;

use crate::modindex::{ModuleIndex, INDEX_PATH};
use anyhow::{bail, Context, Result};
use cpio::{Archive, EntryKind};
use decompress::Compression;
use resolve::Resolution;
use std::collections::BTreeSet;
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

/// What `overlay-init-mkinitramfs` was asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub init: PathBuf,
    pub module_tree: PathBuf,
    /// Names to resolve (defaults plus extras, as the caller chose).
    pub module_names: Vec<String>,
    /// `(source, destination)` pairs.
    pub files: Vec<(PathBuf, String)>,
    /// Dynamically linked programs to add at the same path, with their loader and
    /// shared libraries (`--binary`).
    pub binaries: Vec<PathBuf>,
    /// Store `.ko.xz`/`.ko.zst`/`.ko.gz` as they are, for a kernel that decompresses
    /// modules itself; by default they are stored decompressed, as `.ko`.
    pub keep_compressed: bool,
}

#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub resolution: Resolution,
    /// Non-fatal findings about the build (e.g. a kernel that cannot load what is kept compressed).
    pub warnings: Vec<String>,
    /// `(name, bytes as stored)` of each module in load order.
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

/// Each program of `binaries` (absolute paths on this host) with the loader and
/// shared libraries it needs, read from its ELF headers ([`elf::resolve`]); each
/// file once, at the path the loader will look for it, with its mode. Symlinks
/// are followed: `/sbin/mkfs.ext4 -> mke2fs` is stored as a file named mkfs.ext4.
pub fn binary_files(binaries: &[PathBuf]) -> Result<Vec<ExtraFile>> {
    use std::os::unix::fs::PermissionsExt;
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    for binary in binaries {
        if !binary.is_absolute() {
            bail!(
                "--binary {}: give the absolute path the program has on this host (it keeps it in the initramfs)",
                binary.display()
            );
        }
        let needed = elf::resolve(binary, |path| std::fs::read(path).ok())
            .with_context(|| format!("--binary {}", binary.display()))?;
        for file in needed {
            let dest = file.path.to_string_lossy().into_owned();
            if !seen.insert(dest.clone()) {
                continue;
            }
            let mode = std::fs::metadata(&file.path)
                .with_context(|| format!("stat {} ({})", file.path.display(), file.why))?
                .permissions()
                .mode();
            files.push(ExtraFile {
                dest,
                data: file.data,
                permissions: mode & 0o7777,
            });
        }
    }
    Ok(files)
}

/// Reads everything from disk, resolves modules, assembles and compresses.
pub fn build(request: &BuildRequest) -> Result<BuildOutput> {
    let init = read(&request.init, "the init binary")?;
    let init_size = init.len() as u64;
    // An init that is not ELF (a script) says nothing about the architecture.
    let init_arch = arch::ElfArch::of(&init);
    let mut tree = tree::FsModuleTree::open(&request.module_tree)?;
    let resolution = resolve::resolve(&mut tree, &request.module_names)
        .with_context(|| format!("resolving modules in {}", request.module_tree.display()))?;
    let mut modules = Vec::new();
    let mut module_sizes = Vec::new();
    let mut kept_compressed = BTreeSet::new();
    for module in &resolution.modules {
        let source_name = module
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let compression = Compression::of_file_name(&source_name);
        let (file_name, data) = if request.keep_compressed || compression == Compression::None {
            if compression != Compression::None {
                kept_compressed.insert(compression);
            }
            (source_name, read(&module.path, "module")?)
        } else {
            let name = decompress::uncompressed_file_name(&source_name).to_string();
            (name, tree::read_module(&module.path)?)
        };
        if let Some(init_arch) = init_arch {
            let decompressed;
            let elf = if file_name.ends_with(".ko") {
                &data
            } else {
                decompressed = tree::read_module(&module.path)?;
                &decompressed
            };
            arch::check_module(
                &request.init,
                init_arch,
                &request.module_tree,
                &module.name,
                elf,
            )?;
        }
        module_sizes.push((module.name.clone(), data.len() as u64));
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
    files.extend(binary_files(&request.binaries)?);
    let mut warnings = Vec::new();
    if !kept_compressed.is_empty() {
        warnings.extend(kernel_support_warnings(
            &request.module_tree,
            &kept_compressed,
        ));
    }
    let cpio = assemble(init, modules, files)?.to_newc();
    Ok(BuildOutput {
        resolution,
        warnings,
        module_sizes,
        init_size,
        cpio_size: cpio.len() as u64,
        gzip: gzip(&cpio),
    })
}

/// Where a module tree's kernel config may be, most specific first: `TREE/config`
/// (Fedora), `ROOT/boot/config-VERSION` for `ROOT/lib/modules/VERSION` or
/// `ROOT/usr/lib/modules/VERSION`, and `/proc/config.gz` when the tree is the running
/// kernel's.
fn kernel_config_candidates(module_tree: &Path) -> Vec<PathBuf> {
    let mut candidates = vec![module_tree.join("config")];
    let Some(version) = module_tree
        .file_name()
        .map(|v| v.to_string_lossy().into_owned())
    else {
        return candidates;
    };
    let config_name = format!("config-{version}");
    // TREE = ROOT/lib/modules/VERSION: three levels up is ROOT (or ROOT/usr).
    if let Some(root) = module_tree.ancestors().nth(3) {
        candidates.push(root.join("boot").join(&config_name));
        if root.file_name().is_some_and(|name| name == "usr") {
            if let Some(above_usr) = root.parent() {
                candidates.push(above_usr.join("boot").join(&config_name));
            }
        }
    }
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if running.trim() == version {
        candidates.push(PathBuf::from("/proc/config.gz"));
    }
    candidates
}

/// The first kernel config found for the tree: `(path, text)`.
fn find_kernel_config(module_tree: &Path) -> Option<(PathBuf, String)> {
    kernel_config_candidates(module_tree)
        .into_iter()
        .find_map(|path| {
            let bytes = std::fs::read(&path).ok()?;
            let bytes = if path.extension().is_some_and(|ext| ext == "gz") {
                decompress::decompress(Compression::Gzip, &bytes).ok()?
            } else {
                bytes
            };
            Some((path, String::from_utf8_lossy(&bytes).into_owned()))
        })
}

/// What a kernel config lacks to load modules compressed as `kinds`: module
/// decompression, and the one format the kernel was built to decompress.
pub fn missing_decompression_options(config: &str, kinds: &BTreeSet<Compression>) -> Vec<String> {
    let enabled = |option: &str| {
        config
            .lines()
            .any(|line| line.trim() == format!("{option}=y"))
    };
    std::iter::once("CONFIG_MODULE_DECOMPRESS")
        .chain(kinds.iter().filter_map(|kind| kind.kernel_config_option()))
        .filter(|option| !enabled(option))
        .map(|option| format!("{option}=y"))
        .collect()
}

/// Warnings for `--keep-compressed`: the tree's kernel cannot decompress what is kept,
/// or its config was not found to check.
fn kernel_support_warnings(module_tree: &Path, kinds: &BTreeSet<Compression>) -> Vec<String> {
    match find_kernel_config(module_tree) {
        Some((path, config)) => {
            let missing = missing_decompression_options(&config, kinds);
            if missing.is_empty() {
                Vec::new()
            } else {
                vec![format!(
                    "--keep-compressed: the kernel config {} lacks {}; that kernel cannot load \
                     the compressed modules (build without --keep-compressed to store them decompressed)",
                    path.display(),
                    missing.join(" and ")
                )]
            }
        }
        None => vec![format!(
            "--keep-compressed: no kernel config found for {} (looked for {}); the kernel must have \
             CONFIG_MODULE_DECOMPRESS=y and the matching CONFIG_MODULE_COMPRESS_* to load the compressed modules",
            module_tree.display(),
            kernel_config_candidates(module_tree)
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )],
    }
}

#[cfg(test)]
mod tests;
