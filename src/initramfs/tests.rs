//! Tests against the real Debian cloud kernel's module tree.

use super::modinfo::read_modinfo;
use super::resolve::{resolve, DEFAULT_MODULES};
use super::tree::FsModuleTree;
use super::*;
use crate::modindex::ModuleIndex;
use std::io::Read;

const TREE: &str = "/var/cache/overlay-init/kernel/root/lib/modules/6.1.0-56-cloud-amd64";

/// The real tree; its absence is a failure with the remedy, never a skip.
fn real_tree() -> PathBuf {
    let tree = PathBuf::from(TREE);
    assert!(
        tree.join("modules.builtin").is_file(),
        "{TREE} is missing: run `qemu/fetch-kernel` to download and extract the Debian cloud kernel"
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
