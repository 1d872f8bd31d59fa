//! mkinitramfs: writes a deterministic gzip-compressed newc initramfs holding the
//! overlay-init binary, `/dev/console`, the kernel modules it needs (with their
//! dependencies, read from the modules themselves) and extra files.
//!
//! Usually run through `initramfs/build`, which builds this binary first.

use anyhow::{bail, Context, Result};
use overlay_init::initramfs::{self, resolve::DEFAULT_MODULES, BuildRequest};
use std::path::PathBuf;

const USAGE: &str = "\
usage: mkinitramfs [--init PATH] --modules DIR [--module NAME]... [--no-default-modules]
                   [--keep-compressed] [--file SRC:DEST]... [--binary PATH]... -o OUT

  --init PATH             the init binary, installed as /init (default: the release build,
                          target/x86_64-unknown-linux-musl/release/overlay-init, else
                          target/x86_64-unknown-linux-gnu/release/overlay-init)
  --modules DIR           a kernel module tree (.../lib/modules/VERSION)
  --module NAME           another module to include with its dependencies (repeatable)
  --no-default-modules    leave out the default set (virtio_pci virtio_blk squashfs erofs overlay loop)
  --keep-compressed       store .ko.xz/.ko.zst/.ko.gz modules as they are, for a kernel with
                          CONFIG_MODULE_DECOMPRESS (5.17+); by default they are stored decompressed
  --file SRC:DEST         put the file SRC at DEST in the initramfs, keeping its mode (repeatable)
  --binary PATH           put the program PATH at PATH, with the loader and shared libraries it
                          needs (from its ELF PT_INTERP/DT_NEEDED/RUNPATH), e.g. /sbin/mkfs.ext4
  -o, --output OUT        where to write the gzip-compressed cpio
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

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options> {
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
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--init" => options.init = Some(value("--init")?.into()),
            "--modules" => options.modules = Some(value("--modules")?.into()),
            "--module" => options.extra_modules.push(value("--module")?),
            "--no-default-modules" => options.default_modules = false,
            "--keep-compressed" => options.keep_compressed = true,
            "--file" => options.files.push(value("--file")?),
            "--binary" => options.binaries.push(value("--binary")?.into()),
            "-o" | "--output" => options.output = Some(value("-o")?.into()),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    Ok(options)
}

fn default_init() -> Result<PathBuf> {
    let candidates = [
        "target/x86_64-unknown-linux-musl/release/overlay-init",
        "target/x86_64-unknown-linux-gnu/release/overlay-init",
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
        eprintln!("mkinitramfs: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let options = parse_args(std::env::args().skip(1))?;
    let Some(module_tree) = options.modules else {
        bail!("--modules DIR is required\n\n{USAGE}")
    };
    let Some(output) = options.output else {
        bail!("-o OUT is required\n\n{USAGE}")
    };
    let init = match options.init {
        Some(init) => init,
        None => default_init()?,
    };
    let mut module_names: Vec<String> = Vec::new();
    if options.default_modules {
        module_names.extend(DEFAULT_MODULES.iter().map(|name| name.to_string()));
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
