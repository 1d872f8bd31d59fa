//! The boot benchmark compares equal work: its three initramfs images (overlay-init, the
//! busybox script, the floor init) must carry the same kernel modules and the same module
//! index, which the script and the floor load whole. This builds them the way
//! `qemu/bench-boot` does (`benches/boot/build-bench-initramfs`) and compares what is inside,
//! so a change to one image's module set is caught without booting (no timing here; the
//! benchmark itself also checks the loaded modules and the mounts after every boot).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::{busybox, kernel, repo_dir, run, Scratch};

/// Every file under `lib/modules` of an unpacked initramfs: path -> bytes.
fn modules_of(image: &Path, scratch: &Scratch, name: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = scratch.join(name);
    fs::create_dir_all(&dir).unwrap();
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"gzip -dc "$1" | (cd "$2" && cpio -idm --quiet --no-absolute-filenames)"#)
        .arg("sh")
        .arg(image)
        .arg(&dir));
    let mut files = BTreeMap::new();
    let root = dir.join("lib/modules");
    for entry in fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let entry = entry.unwrap();
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            fs::read(entry.path()).unwrap(),
        );
    }
    files
}

/// The module names an index lists, in order.
fn index_names(index: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(index)
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// Builds the three images (with `load` as `--load`, or the default set) and checks that
/// their module files and index are identical; returns the index's module names.
fn build_and_compare(load: Option<&str>) -> Vec<String> {
    let scratch = Scratch::new("bench-equal-work");
    // The init binary does not matter here, only the modules around it.
    let init = scratch.join("init");
    fs::write(&init, b"#!/bin/sh\n").unwrap();
    let out = scratch.join("images");
    let mut command = Command::new(repo_dir().join("benches/boot/build-bench-initramfs"));
    command
        .arg("--modules")
        .arg(&kernel().modules)
        .arg("--init")
        .arg(&init)
        .arg("--busybox")
        .arg(busybox());
    if let Some(load) = load {
        command.arg("--load").arg(load);
    }
    run(command.arg(&out));
    let images = ["overlay-init", "busybox", "floor"].map(|name| {
        (
            name,
            modules_of(&out.join(format!("{name}.cpio.gz")), &scratch, name),
        )
    });
    let (first_name, first) = &images[0];
    assert!(
        first.contains_key("overlay-init.index"),
        "no module index in {first_name}'s initramfs: {:?}",
        first.keys().collect::<Vec<_>>()
    );
    for (name, files) in &images[1..] {
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            first.keys().collect::<Vec<_>>(),
            "{name}'s initramfs carries other module files than {first_name}'s"
        );
        for (path, bytes) in files {
            assert!(
                bytes == &first[path],
                "{path} differs between {name}'s and {first_name}'s initramfs"
            );
        }
    }
    let names = index_names(&first["overlay-init.index"]);
    // Every module file is in the index and the other way round: nothing is carried unloaded.
    assert_eq!(
        names.len(),
        first.len() - 1,
        "index {names:?} vs files {:?}",
        first.keys().collect::<Vec<_>>()
    );
    names
}

#[test]
fn the_three_benchmark_initramfs_images_carry_the_same_modules() {
    // What overlay-init loads for a squashfs lower and a tmpfs upper (no erofs, loop).
    let names = build_and_compare(Some("virtio_pci virtio_blk squashfs overlay"));
    for wanted in ["virtio_pci", "virtio_blk", "squashfs", "overlay"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} not in {names:?}"
        );
    }
    for unwanted in ["erofs", "loop"] {
        assert!(
            !names.iter().any(|n| n == unwanted),
            "{unwanted} was not asked for but is in {names:?}"
        );
    }
    // Without --load: the builder's default set, still the same in all three.
    let defaults = build_and_compare(None);
    assert!(defaults.iter().any(|n| n == "erofs"), "{defaults:?}");
}
