//! Tests against the real Debian cloud kernel's module tree.

use super::modinfo::read_modinfo;
use super::resolve::{resolve, DEFAULT_MODULES};
use super::tree::FsModuleTree;
use super::*;
use crate::modindex::ModuleIndex;
use std::io::Read;

/// The real tree, as `qemu/fetch-kernel` prints it (second line): whatever kernel release the
/// archive serves today, in whatever cache `OVERLAY_INIT_CACHE` names. Asked once per process;
/// a failure is a failure with the script's own message, never a skip.
fn real_tree() -> PathBuf {
    static TREE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    fetched_tree(&TREE, "x86_64")
}

/// [`real_tree`] of Debian's arm64 cloud kernel (`qemu/fetch-kernel --arch arm64`).
fn real_arm64_tree() -> PathBuf {
    static TREE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    fetched_tree(&TREE, "arm64")
}

fn fetched_tree(cell: &std::sync::OnceLock<Result<PathBuf, String>>, arch: &str) -> PathBuf {
    let tree = cell.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu/fetch-kernel");
        let output = std::process::Command::new(&script)
            .args(["--arch", arch])
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}): {stdout}",
                script.display(),
                output.status
            ));
        }
        // The last line is the module tree: anything before the two paths is chatter.
        match stdout.lines().rev().find(|line| !line.trim().is_empty()) {
            Some(line) => Ok(PathBuf::from(line.trim())),
            None => Err(format!(
                "{} printed no module tree: {stdout}",
                script.display()
            )),
        }
    });
    let tree = match tree {
        Ok(tree) => tree.clone(),
        Err(message) => panic!("{message}"),
    };
    assert!(
        tree.join("modules.builtin").is_file(),
        "{} has no modules.builtin: run `qemu/fetch-kernel --force`",
        tree.display()
    );
    tree
}

fn defaults() -> Vec<String> {
    DEFAULT_MODULES
        .iter()
        .map(|name| name.to_string())
        .collect()
}

#[test]
fn reads_modinfo_of_real_modules() {
    let tree = real_tree();
    let read = |relative: &str| read_modinfo(&std::fs::read(tree.join(relative)).unwrap()).unwrap();

    let virtio_blk = read("kernel/drivers/block/virtio_blk.ko");
    assert_eq!(virtio_blk.name.as_deref(), Some("virtio_blk"));
    assert_eq!(virtio_blk.depends, ["virtio", "virtio_ring"]);

    let virtio_pci = read("kernel/drivers/virtio/virtio_pci.ko");
    assert_eq!(
        virtio_pci.depends,
        [
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio"
        ]
    );

    let overlay = read("kernel/fs/overlayfs/overlay.ko");
    assert_eq!(overlay.name.as_deref(), Some("overlay"));
    assert!(overlay.depends.is_empty());

    assert_eq!(read("kernel/fs/erofs/erofs.ko").depends, ["libcrc32c"]);
    let libcrc32c = read("kernel/lib/libcrc32c.ko");
    assert_eq!(libcrc32c.softdep_pre, ["crc32c"]);

    // Dashes in file names, underscores in the module name; aliases are read.
    let crc32c_intel = read("kernel/arch/x86/crypto/crc32c-intel.ko");
    assert_eq!(crc32c_intel.name.as_deref(), Some("crc32c_intel"));
    assert!(crc32c_intel.aliases.iter().any(|alias| alias == "crc32c"));
}

#[test]
fn resolves_the_default_set_in_dependency_order() {
    let mut tree = FsModuleTree::open(&real_tree()).unwrap();
    let resolution = resolve(&mut tree, &defaults()).unwrap();
    let order: Vec<&str> = resolution.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        order,
        [
            "virtio_ring",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio",
            "virtio_pci",
            "virtio_blk",
            "squashfs",
            "libcrc32c",
            "erofs",
            "overlay",
            "loop",
            "dm_mod",
            "reed_solomon",
            "dm_bufio",
            "dm_verity",
        ]
    );
    let depends_of = |name: &str| {
        &resolution
            .modules
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .depends
    };
    assert_eq!(depends_of("virtio_blk"), &["virtio", "virtio_ring"]);
    assert_eq!(depends_of("virtio"), &["virtio_ring"]);
    assert!(depends_of("overlay").is_empty());
    assert_eq!(depends_of("erofs"), &["libcrc32c"]);
    // libcrc32c's soft dependency `crc32c` is provided by built-in crc32c_generic.
    assert!(depends_of("libcrc32c").is_empty());
    assert!(resolution.warnings.is_empty(), "{:?}", resolution.warnings);
}

/// dm-verity's dependencies in the real tree, and that the boot's on-demand list plus
/// `verity::MODULES` keeps the whole device-mapper stack out of the eager load.
#[test]
fn dm_verity_is_carried_with_its_dependencies_and_loaded_only_on_demand() {
    let mut tree = FsModuleTree::open(&real_tree()).unwrap();
    let resolution = resolve(&mut tree, &defaults()).unwrap();
    let depends_of = |name: &str| {
        let mut depends = resolution
            .modules
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} resolved"))
            .depends
            .clone();
        depends.sort();
        depends
    };
    assert_eq!(
        depends_of("dm_verity"),
        ["dm_bufio", "dm_mod", "reed_solomon"]
    );
    assert_eq!(depends_of("dm_bufio"), ["dm_mod"]);
    assert!(depends_of("dm_mod").is_empty());

    let mut index = ModuleIndex::default();
    for module in &resolution.modules {
        index
            .push(
                &module.name,
                &format!("{}.ko", module.name),
                module.depends.iter().map(String::as_str),
            )
            .unwrap();
    }
    let on_demand: Vec<&str> = crate::boot::steps::ON_DEMAND_MODULES
        .iter()
        .chain(crate::verity::MODULES)
        .copied()
        .collect();
    let name = |p: usize| index.entries[p].name.as_str();
    let eager: Vec<&str> = index.eager(&on_demand).into_iter().map(name).collect();
    for dm in ["dm_mod", "dm_bufio", "reed_solomon", "dm_verity"] {
        assert!(!eager.contains(&dm), "{dm} is loaded eagerly: {eager:?}");
    }
    let on_verity: Vec<&str> = index
        .closure(crate::verity::MODULES)
        .into_iter()
        .map(name)
        .collect();
    assert_eq!(
        on_verity,
        ["dm_mod", "reed_solomon", "dm_bufio", "dm_verity"]
    );
}

#[test]
fn builtin_and_missing_names_in_the_real_tree() {
    let mut tree = FsModuleTree::open(&real_tree()).unwrap();
    // ext4 is built into the Debian cloud kernel: skipped, not an error.
    let resolution = resolve(&mut tree, &["ext4".to_string(), "crc32c-intel".to_string()]).unwrap();
    assert_eq!(resolution.builtin, ["ext4"]);
    assert_eq!(
        resolution
            .modules
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["crc32c_intel"]
    );
    let error = resolve(&mut tree, &["no_such_module".to_string()]).unwrap_err();
    assert!(
        format!("{error:#}").contains("`no_such_module` was requested"),
        "{error:#}"
    );
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn build_is_byte_identical_and_holds_what_it_should() {
    let tree = real_tree();
    let request = BuildRequest {
        // Any file serves as the init here; its bytes must land at /init unchanged.
        init: tree.join("modules.order"),
        module_tree: tree.clone(),
        module_names: defaults(),
        files: vec![(
            tree.join("modules.builtin"),
            "/etc/builtin-list".to_string(),
        )],
        binaries: Vec::new(),
        keep_compressed: false,
    };
    let first = build(&request).unwrap();
    let second = build(&request).unwrap();
    assert!(
        first.gzip == second.gzip,
        "two builds from the same inputs differ"
    );
    // gzip header: no file name flag, mtime 0.
    assert_eq!(&first.gzip[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&first.gzip[4..8], &[0, 0, 0, 0]);

    let entries = cpio::parse_newc(&gunzip(&first.gzip)).unwrap();
    assert_eq!(first.cpio_size % 512, 0);
    let entry = |path: &str| {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} missing"))
    };
    assert_eq!(
        entry("init").data,
        std::fs::read(tree.join("modules.order")).unwrap()
    );
    assert_eq!(entry("init").mode, 0o100755);
    assert_eq!(
        (entry("dev/console").mode, entry("dev/console").rdev),
        (0o020600, (5, 1))
    );
    assert_eq!(
        entry("etc/builtin-list").data,
        std::fs::read(tree.join("modules.builtin")).unwrap()
    );
    assert_eq!(
        entry("lib/modules/virtio_blk.ko").data,
        std::fs::read(tree.join("kernel/drivers/block/virtio_blk.ko")).unwrap()
    );

    let index = ModuleIndex::parse(
        std::str::from_utf8(&entry("lib/modules/overlay-init.index").data).unwrap(),
    )
    .unwrap();
    let indexed: Vec<&str> = index.entries.iter().map(|e| e.name.as_str()).collect();
    let resolved: Vec<&str> = first
        .resolution
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(indexed, resolved);
    for module in &index.entries {
        entry(&format!("lib/modules/{}", module.path));
    }

    // Sorted paths, every parent present, fixed metadata.
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    for e in &entries {
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            assert!(paths.contains(&parent), "{} has no parent entry", e.path);
        }
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0));
    }
}

#[test]
fn file_specs_are_checked() {
    assert_eq!(
        parse_file_spec("/bin/busybox:/bin/sh").unwrap(),
        (PathBuf::from("/bin/busybox"), "/bin/sh".into())
    );
    assert_eq!(
        parse_file_spec("a:b:/x").unwrap(),
        (PathBuf::from("a:b"), "/x".into())
    );
    for bad in ["nocolon", ":/x", "/src:relative", "/src:/"] {
        assert!(parse_file_spec(bad).is_err(), "{bad}");
    }
}

// ---- compressed module trees, made at test time from real modules ----

/// A directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "overlay-init-initramfs-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A compressor command line, run on a copied `.ko` (which it replaces by `.ko.SUFFIX`).
type Compressor = &'static [&'static str];
const XZ: Compressor = &["xz", "-q"]; // xz's own default: CRC64 check
const XZ_LIKE_KBUILD: Compressor = &["xz", "-q", "--check=crc32", "--lzma2=dict=1MiB"];
const ZSTD: Compressor = &["zstd", "-q", "--rm"];
const ZSTD_19_NO_CHECKSUM: Compressor = &["zstd", "-q", "--rm", "-19", "--no-check"];
const GZIP: Compressor = &["gzip", "-n"];

/// `ROOT/lib/modules/VERSION` holding the real default-set modules (plus the
/// `modules.builtin*` lists), each compressed by `compressor_for(module name)`.
struct CompressedTree {
    dir: TempDir,
    version: &'static str,
    /// Module name -> `(original .ko path, path of the compressed copy)`.
    files: BTreeMap<String, (PathBuf, PathBuf)>,
}

use std::collections::BTreeMap;

impl CompressedTree {
    fn new(tag: &str, compressor_for: impl Fn(&str) -> Compressor) -> CompressedTree {
        let real = real_tree();
        let dir = TempDir::new(tag);
        let version = "6.1.0-test";
        let tree = dir.0.join("lib/modules").join(version);
        std::fs::create_dir_all(&tree).unwrap();
        for list in ["modules.builtin", "modules.builtin.modinfo"] {
            std::fs::copy(real.join(list), tree.join(list)).unwrap();
        }
        let resolution = resolve(&mut FsModuleTree::open(&real).unwrap(), &defaults()).unwrap();
        let mut files = BTreeMap::new();
        for module in &resolution.modules {
            let relative = module.path.strip_prefix(&real).unwrap();
            let copy = tree.join(relative);
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            std::fs::copy(&module.path, &copy).unwrap();
            let compressor = compressor_for(&module.name);
            let status = std::process::Command::new(compressor[0])
                .args(&compressor[1..])
                .arg(&copy)
                .status()
                .unwrap_or_else(|e| panic!("running {}: {e}", compressor[0]));
            assert!(status.success(), "{compressor:?} {}", copy.display());
            let suffix = match compressor[0] {
                "xz" => "xz",
                "zstd" => "zst",
                _ => "gz",
            };
            let compressed = copy.with_extension(format!("ko.{suffix}"));
            assert!(
                compressed.is_file() && !copy.exists(),
                "{}",
                compressed.display()
            );
            files.insert(module.name.clone(), (module.path.clone(), compressed));
        }
        CompressedTree {
            dir,
            version,
            files,
        }
    }

    fn tree(&self) -> PathBuf {
        self.dir.0.join("lib/modules").join(self.version)
    }

    fn request(&self, keep_compressed: bool) -> BuildRequest {
        BuildRequest {
            init: real_tree().join("modules.order"),
            module_tree: self.tree(),
            module_names: defaults(),
            files: Vec::new(),
            binaries: Vec::new(),
            keep_compressed,
        }
    }

    /// Writes `ROOT/boot/config-VERSION`, where the builder looks for the kernel config.
    fn write_kernel_config(&self, text: &str) -> PathBuf {
        let path = self
            .dir
            .0
            .join("boot")
            .join(format!("config-{}", self.version));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Resolution as names and dependency lists (paths differ between trees by design).
fn shape(resolution: &Resolution) -> Vec<(String, Vec<String>)> {
    resolution
        .modules
        .iter()
        .map(|m| (m.name.clone(), m.depends.clone()))
        .collect()
}

#[test]
fn compressed_trees_resolve_exactly_like_the_uncompressed_one() {
    let expected = resolve(&mut FsModuleTree::open(&real_tree()).unwrap(), &defaults()).unwrap();
    for compressor in [XZ, XZ_LIKE_KBUILD, ZSTD, ZSTD_19_NO_CHECKSUM, GZIP] {
        let compressed = CompressedTree::new("resolve", |_| compressor);
        let mut tree = FsModuleTree::open(&compressed.tree()).unwrap();
        let resolution =
            resolve(&mut tree, &defaults()).unwrap_or_else(|e| panic!("{compressor:?}: {e:#}"));
        assert_eq!(shape(&resolution), shape(&expected), "{compressor:?}");
        assert_eq!(resolution.builtin, expected.builtin, "{compressor:?}");
        for module in &resolution.modules {
            assert_eq!(
                module.path, compressed.files[&module.name].1,
                "{compressor:?}"
            );
        }
    }
}

/// A tree mixing every format: virtio_* as xz, filesystems as zstd, the rest gzip.
fn mixed_tree(tag: &str) -> CompressedTree {
    CompressedTree::new(tag, |name| {
        if name.starts_with("virtio") {
            XZ_LIKE_KBUILD
        } else if ["squashfs", "erofs", "overlay"].contains(&name) {
            ZSTD
        } else {
            GZIP
        }
    })
}

fn parse_index(entries: &[cpio::ParsedEntry]) -> ModuleIndex {
    let index = entries
        .iter()
        .find(|e| e.path == "lib/modules/overlay-init.index")
        .expect("index in the archive");
    ModuleIndex::parse(std::str::from_utf8(&index.data).unwrap()).unwrap()
}

#[test]
fn default_build_stores_compressed_modules_decompressed_and_deterministically() {
    let compressed = mixed_tree("default");
    let first = build(&compressed.request(false)).unwrap();
    assert_eq!(
        first.gzip,
        build(&compressed.request(false)).unwrap().gzip,
        "two builds from the same inputs differ"
    );
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let entries = cpio::parse_newc(&gunzip(&first.gzip)).unwrap();
    let index = parse_index(&entries);
    assert_eq!(index.entries.len(), compressed.files.len());
    for module in &index.entries {
        // Stored under the original file name (dm-mod.ko for the module dm_mod).
        let original_name = compressed.files[&module.name].0.file_name().unwrap();
        assert_eq!(module.path, original_name.to_str().unwrap(), "{module:?}");
        assert!(!module.is_compressed());
        let stored = entries
            .iter()
            .find(|e| e.path == format!("lib/modules/{}", module.path))
            .unwrap_or_else(|| panic!("{} missing", module.path));
        let original = std::fs::read(&compressed.files[&module.name].0).unwrap();
        assert!(
            stored.data == original,
            "{} differs from the original .ko",
            module.path
        );
    }
    assert!(
        !entries.iter().any(|e| e.path.ends_with(".xz")
            || e.path.ends_with(".zst")
            || e.path.ends_with(".gz")),
        "a compressed file was stored"
    );
}

#[test]
fn keep_compressed_stores_the_files_as_they_are_and_the_index_marks_them() {
    let compressed = mixed_tree("keep");
    let built = build(&compressed.request(true)).unwrap();
    let entries = cpio::parse_newc(&gunzip(&built.gzip)).unwrap();
    let index = parse_index(&entries);
    assert_eq!(index.entries.len(), compressed.files.len());
    for module in &index.entries {
        let source = &compressed.files[&module.name].1;
        let file_name = source.file_name().unwrap().to_string_lossy();
        assert_eq!(module.path, file_name, "{module:?}");
        assert!(module.is_compressed(), "{module:?}");
        let stored = entries
            .iter()
            .find(|e| e.path == format!("lib/modules/{file_name}"))
            .unwrap_or_else(|| panic!("{file_name} missing"));
        assert!(
            stored.data == std::fs::read(source).unwrap(),
            "{file_name} was changed"
        );
    }
    // No kernel config next to the tree: say what the kernel needs.
    assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
    assert!(
        built.warnings[0].contains("no kernel config found")
            && built.warnings[0].contains("CONFIG_MODULE_DECOMPRESS=y"),
        "{:?}",
        built.warnings
    );
}

#[test]
fn keep_compressed_checks_the_kernel_config_next_to_the_tree() {
    let compressed = CompressedTree::new("config", |_| ZSTD);
    // Debian's own config: no module decompression at all.
    let debian_config = std::fs::read_dir(real_tree().join("../../../boot"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("config-")
        })
        .expect("the Debian kernel's boot/config-VERSION");
    let config_path =
        compressed.write_kernel_config(&std::fs::read_to_string(debian_config).unwrap());
    let warnings = build(&compressed.request(true)).unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&config_path.display().to_string())
            && warnings[0].contains("CONFIG_MODULE_DECOMPRESS=y and CONFIG_MODULE_COMPRESS_ZSTD=y"),
        "{warnings:?}"
    );
    // A kernel that decompresses xz only cannot load .ko.zst.
    compressed.write_kernel_config("CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_XZ=y\n");
    let warnings = build(&compressed.request(true)).unwrap().warnings;
    assert!(
        warnings.len() == 1
            && warnings[0].contains("CONFIG_MODULE_COMPRESS_ZSTD=y")
            && !warnings[0].contains("CONFIG_MODULE_DECOMPRESS=y"),
        "{warnings:?}"
    );
    compressed.write_kernel_config("CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_ZSTD=y\n");
    let warnings = build(&compressed.request(true)).unwrap().warnings;
    assert!(warnings.is_empty(), "{warnings:?}");
    // The default build decompresses, so whatever the kernel config says there is nothing to warn about.
    compressed.write_kernel_config("# CONFIG_MODULE_DECOMPRESS is not set\n");
    assert!(build(&compressed.request(false))
        .unwrap()
        .warnings
        .is_empty());
}

#[test]
fn missing_decompression_options_lists_what_the_config_lacks() {
    let kinds: BTreeSet<Compression> = [Compression::Xz, Compression::Gzip].into();
    assert_eq!(
        missing_decompression_options("# CONFIG_MODULE_DECOMPRESS is not set\n", &kinds),
        [
            "CONFIG_MODULE_DECOMPRESS=y",
            "CONFIG_MODULE_COMPRESS_GZIP=y",
            "CONFIG_MODULE_COMPRESS_XZ=y"
        ]
    );
    assert_eq!(
        missing_decompression_options(
            "CONFIG_MODULE_DECOMPRESS=y\nCONFIG_MODULE_COMPRESS_XZ=y\n",
            &kinds
        ),
        ["CONFIG_MODULE_COMPRESS_GZIP=y"]
    );
}

#[test]
fn corrupt_or_truncated_compressed_module_is_an_error_naming_the_file() {
    let compressed = CompressedTree::new(
        "corrupt",
        |name| if name == "virtio_blk" { XZ } else { ZSTD },
    );
    let broken = &compressed.files["virtio_blk"].1;
    let good = std::fs::read(broken).unwrap();
    let truncated = &good[..good.len() / 2];
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    for (what, bytes, expected) in [
        ("truncated", truncated, "truncated"),
        ("corrupt", flipped.as_slice(), "corrupt"),
    ] {
        std::fs::write(broken, bytes).unwrap();
        let mut tree = FsModuleTree::open(&compressed.tree()).unwrap();
        let error = format!("{:#}", resolve(&mut tree, &defaults()).unwrap_err());
        assert!(
            error.contains(&broken.display().to_string()) && error.contains(expected),
            "{what}: {error}"
        );
    }
    // A truncated zstd module too.
    std::fs::write(broken, &good).unwrap();
    let overlay = &compressed.files["overlay"].1;
    let zstd = std::fs::read(overlay).unwrap();
    std::fs::write(overlay, &zstd[..zstd.len() - 100]).unwrap();
    let error = format!("{:#}", build(&compressed.request(false)).unwrap_err());
    assert!(
        error.contains(&overlay.display().to_string()) && error.contains("truncated"),
        "{error}"
    );
}

/// A file that is only an ELF header for `machine` (64-bit little-endian): the init's
/// architecture is all the builder reads of it.
fn elf_header_file(dir: &TempDir, name: &str, machine: u16) -> PathBuf {
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.resize(0x10, 0);
    bytes.extend(2u16.to_le_bytes()); // ET_EXEC
    bytes.extend(machine.to_le_bytes());
    bytes.resize(64, 0);
    let path = dir.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn arm64_tree_builds_with_an_arm64_init_and_is_refused_with_an_x86_64_one() {
    let tree = real_arm64_tree();
    let dir = TempDir::new("arch");
    let request = |init: PathBuf| BuildRequest {
        init,
        module_tree: tree.clone(),
        module_names: defaults(),
        files: Vec::new(),
        binaries: Vec::new(),
        keep_compressed: false,
    };
    let arm64_init = elf_header_file(&dir, "init-aarch64", arch::EM_AARCH64);
    let built = build(&request(arm64_init)).unwrap();
    let names: Vec<&str> = built
        .resolution
        .modules
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    for needed in ["virtio_pci", "virtio_blk", "squashfs", "overlay", "loop"] {
        assert!(names.contains(&needed), "{needed} missing: {names:?}");
    }

    let x86_init = elf_header_file(&dir, "init-x86_64", arch::EM_X86_64);
    let error = format!("{:#}", build(&request(x86_init.clone())).unwrap_err());
    assert!(
        error.contains(&format!(
            "the module tree {} is for aarch64 (64-bit little-endian)",
            tree.display()
        )) && error.contains(&format!(
            "but the init {} is for x86_64 (64-bit little-endian)",
            x86_init.display()
        )),
        "{error}"
    );
    // And the other way round, on the x86_64 tree.
    let arm64_init = elf_header_file(&dir, "init-aarch64", arch::EM_AARCH64);
    let error = format!(
        "{:#}",
        build(&BuildRequest {
            module_tree: real_tree(),
            ..request(arm64_init)
        })
        .unwrap_err()
    );
    assert!(
        error.contains("is for x86_64 (64-bit little-endian)")
            && error.contains("is for aarch64 (64-bit little-endian)"),
        "{error}"
    );
}

#[test]
fn the_live_preset_resolves_in_the_real_tree() {
    let mut tree = FsModuleTree::open(&real_tree()).unwrap();
    let names: Vec<String> = super::presets::LIVE_MODULES
        .iter()
        .map(|name| name.to_string())
        .collect();
    let resolution = resolve(&mut tree, &names).unwrap();
    let order: Vec<&str> = resolution.modules.iter().map(|m| m.name.as_str()).collect();
    let position = |name: &str| {
        order
            .iter()
            .position(|m| *m == name)
            .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    };
    // A CD: the SCSI core before the CD driver, cdrom before sr_mod; the controllers.
    assert!(position("scsi_mod") < position("sr_mod"));
    assert!(position("cdrom") < position("sr_mod"));
    for name in [
        "ata_piix",
        "virtio_scsi",
        "sd_mod",
        "isofs",
        "exfat",
        "loop",
    ] {
        position(name);
    }
    // vfat on the fat core, and the character sets its mount options name.
    assert!(position("fat") < position("vfat"));
    for name in ["nls_cp437", "nls_ascii", "nls_iso8859_1", "nls_utf8"] {
        position(name);
    }
    assert!(resolution.warnings.is_empty(), "{:?}", resolution.warnings);
}
/// `--binary`: every file the loader will open is in the archive, at the path
/// it will look for it, and each only once even when two programs share libraries.
#[test]
fn binaries_come_with_their_loader_and_every_library() {
    let binaries = [
        PathBuf::from("/sbin/mkfs.ext4"),
        PathBuf::from("/sbin/mke2fs"),
    ];
    let files = binary_files(&binaries).unwrap();
    let archive = assemble(b"init".to_vec(), Vec::new(), files).unwrap();
    let entries = cpio::parse_newc(&archive.to_newc()).unwrap();
    let by_path: BTreeMap<String, &cpio::ParsedEntry> = entries
        .iter()
        .map(|e| (format!("/{}", e.path), e))
        .collect();
    let mkfs = by_path.get("/sbin/mkfs.ext4").expect("the program itself");
    // The symlink's target is stored under the name asked for.
    assert_eq!(mkfs.data, std::fs::read("/sbin/mke2fs").unwrap());
    assert!(mkfs.mode & 0o111 != 0, "executable");
    let deps = elf::parse(&mkfs.data).unwrap();
    let loader = deps.interpreter.clone().unwrap();
    assert!(by_path.contains_key(&loader), "the loader {loader}");
    // Every DT_NEEDED of every ELF file in the archive is there, in a library dir.
    let dirs = elf::library_dirs(&deps);
    for entry in &entries {
        let Ok(object) = elf::parse(&entry.data) else {
            continue;
        };
        for needed in &object.needed {
            let loader_name = Path::new(&loader).file_name().unwrap().to_string_lossy();
            if *needed == loader_name {
                continue;
            }
            assert!(
                dirs.iter()
                    .any(|dir| by_path.contains_key(&format!("{dir}/{needed}"))),
                "{needed} of /{} is missing",
                entry.path
            );
        }
    }
    let e = binary_files(&[PathBuf::from("sbin/mke2fs")]).unwrap_err();
    assert!(format!("{e:#}").contains("absolute path"), "{e:#}");
    let e = binary_files(&[PathBuf::from("/nonexistent/mkfs")]).unwrap_err();
    assert!(
        format!("{e:#}").contains("--binary /nonexistent/mkfs: /nonexistent/mkfs not found"),
        "{e:#}"
    );
}
