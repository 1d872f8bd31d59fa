//! overlay-init-mkinitramfs: writes a deterministic gzip-compressed newc initramfs holding the
//! overlay-init binary, `/dev/console`, the kernel modules it needs (with their
//! dependencies, read from the modules themselves) and extra files.
//!
//! In the source tree, run it through `initramfs/build` (which builds it first); the
//! Debian package installs it as `/usr/sbin/overlay-init-mkinitramfs`, next to
//! initramfs-tools' `mkinitramfs` and dracut, and its kernel hook calls it.
//! Manual: `man/overlay-init-mkinitramfs.8.scd`.

use anyhow::{Context, Result};
use overlay_init::initramfs::{self, arch, BuildRequest};
use std::path::PathBuf;

const USAGE: &str = "\
usage: overlay-init-mkinitramfs [--init PATH] --modules DIR [--module NAME]... [--live]
                                [--no-default-modules] [--keep-compressed]
                                [--file SRC:DEST]... [--binary PATH]... -o OUT

  --init PATH             the init binary, installed as /init (default: the first that
                          exists of target/x86_64-unknown-linux-musl/release/overlay-init,
                          target/x86_64-unknown-linux-gnu/release/overlay-init (a source
                          tree) and /usr/sbin/overlay-init (the installed package))
  --modules DIR           a kernel module tree (.../lib/modules/VERSION)
  --module NAME           another module to include with its dependencies (repeatable)
  --live                  add the live-media modules: CD-ROM (sr_mod cdrom ata_piix virtio_scsi),
                          sd_mod, isofs, vfat with its character sets, exfat, loop
  --no-default-modules    leave out the default set (virtio_pci virtio_blk squashfs erofs overlay loop;
                          for an aarch64 init also virtio_mmio, the other virtio transport of QEMU virt)
  --keep-compressed       store .ko.xz/.ko.zst/.ko.gz modules as they are, for a kernel with
                          CONFIG_MODULE_DECOMPRESS (5.17+); by default they are stored decompressed
  --file SRC:DEST         put the file SRC at DEST in the initramfs, keeping its mode (repeatable)
  --binary PATH           put the program PATH at PATH, with the loader and shared libraries it
                          needs (from its ELF PT_INTERP/DT_NEEDED/RUNPATH), e.g. /sbin/mkfs.ext4
  -o, --output OUT        where to write the gzip-compressed cpio
  -h, --help              this text
  --version               the version

Exit status: 0 written, 1 the build failed, 2 bad arguments.
";

struct Options {
    init: Option<PathBuf>,
    modules: Option<PathBuf>,
    extra_modules: Vec<String>,
    default_modules: bool,
    keep_compressed: bool,
    files: Vec<String>,
    binaries: Vec<PathBuf>,
    output: Option<PathBuf>,
}

/// What the command line asked for.
enum Parsed {
    Build(Options),
    Help,
    Version,
}

/// A usage error: reported once, with the usage text, exit status 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage_error(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Parsed> {
    let mut options = Options {
        init: None,
        modules: None,
        extra_modules: Vec::new(),
        default_modules: true,
        keep_compressed: false,
        files: Vec::new(),
        binaries: Vec::new(),
        output: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| usage_error(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--init" => options.init = Some(value("--init")?.into()),
            "--modules" => options.modules = Some(value("--modules")?.into()),
            "--module" => options.extra_modules.push(value("--module")?),
            "--live" => options.extra_modules.extend(
                initramfs::presets::LIVE_MODULES
                    .iter()
                    .map(|name| name.to_string()),
            ),
            "--no-default-modules" => options.default_modules = false,
            "--keep-compressed" => options.keep_compressed = true,
            "--file" => options.files.push(value("--file")?),
            "--binary" => options.binaries.push(value("--binary")?.into()),
            "-o" | "--output" => options.output = Some(value("-o")?.into()),
            "-h" | "--help" => return Ok(Parsed::Help),
            "--version" => return Ok(Parsed::Version),
            other => return Err(usage_error(format!("unknown argument `{other}`"))),
        }
    }
    Ok(Parsed::Build(options))
}

fn default_init() -> Result<PathBuf> {
    let candidates = [
        "target/x86_64-unknown-linux-musl/release/overlay-init",
        "target/x86_64-unknown-linux-gnu/release/overlay-init",
        "/usr/sbin/overlay-init",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "no --init given and no release build found at {}; build it or pass --init",
                candidates.join(" or ")
            )
        })
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn main() {
    if let Err(error) = run() {
        eprintln!("overlay-init-mkinitramfs: {error:#}");
        let usage = error.downcast_ref::<UsageError>().is_some();
        std::process::exit(if usage { 2 } else { 1 });
    }
}

fn run() -> Result<()> {
    let options = match parse_args(std::env::args().skip(1))? {
        Parsed::Build(options) => options,
        Parsed::Help => {
            print!("{USAGE}");
            return Ok(());
        }
        Parsed::Version => {
            println!("overlay-init-mkinitramfs {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
    };
    let Some(module_tree) = options.modules else {
        return Err(usage_error("--modules DIR is required"));
    };
    let Some(output) = options.output else {
        return Err(usage_error("-o OUT is required"));
    };
    let init = match options.init {
        Some(init) => init,
        None => default_init()?,
    };
    let mut module_names: Vec<String> = Vec::new();
    if options.default_modules {
        // The default set depends on the init's architecture (see arch::default_modules).
        let init_arch = std::fs::read(&init)
            .ok()
            .and_then(|bytes| arch::ElfArch::of(&bytes));
        module_names.extend(
            arch::default_modules(init_arch)
                .iter()
                .map(|name| name.to_string()),
        );
    }
    module_names.extend(options.extra_modules);
    let files = options
        .files
        .iter()
        .map(|spec| initramfs::parse_file_spec(spec))
        .collect::<Result<Vec<_>>>()?;

    let request = BuildRequest {
        init: init.clone(),
        module_tree,
        module_names,
        files,
        binaries: options.binaries,
        keep_compressed: options.keep_compressed,
    };
    let built = initramfs::build(&request)?;
    std::fs::write(&output, &built.gzip)
        .with_context(|| format!("writing {}", output.display()))?;

    println!("init: {} ({})", init.display(), kib(built.init_size));
    println!("modules, in load order:");
    for (module, (_, size)) in built.resolution.modules.iter().zip(&built.module_sizes) {
        let needs = if module.depends.is_empty() {
            String::new()
        } else {
            format!("  needs {}", module.depends.join(", "))
        };
        println!("  {:<24} {:>10}{needs}", module.name, kib(*size));
    }
    if !built.resolution.builtin.is_empty() {
        println!(
            "built into the kernel (skipped): {}",
            built.resolution.builtin.join(", ")
        );
    }
    for warning in built.resolution.warnings.iter().chain(&built.warnings) {
        println!("warning: {warning}");
    }
    let module_total: u64 = built.module_sizes.iter().map(|(_, size)| size).sum();
    println!(
        "modules total: {} in {} files",
        kib(module_total),
        built.module_sizes.len()
    );
    println!(
        "cpio: {}, gzip: {} -> {}",
        kib(built.cpio_size),
        kib(built.gzip.len() as u64),
        output.display()
    );
    Ok(())
}
