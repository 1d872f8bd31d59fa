//! The boot path end to end in QEMU (issue 2): overlay-init as `/init` of an
//! initramfs, the demo root as the lower, and `/sbin/test-init` as the real init,
//! whose markers on the serial console these tests read. Every boot has a hard
//! timeout (the harness's `BootSpec::timeout`).
//!
//! Run: `cargo test --test qemu boot::` (as root; builds the artifacts on first use).

use crate::support::*;

/// A test-init script on the demo root, with a tmpfs upper unless `extra` says otherwise.
fn boot_with(disks: Vec<Disk>, extra: &str, script: &str) -> BootResult {
    boot_on(Arch::X86_64, disks, extra, script)
}

/// [`boot_with`] on `arch`.
fn boot_on(arch: Arch, disks: Vec<Disk>, extra: &str, script: &str) -> BootResult {
    boot(&BootSpec {
        arch,
        append: format!("root=/dev/vda {extra} {}", test_init_args(script)),
        disks,

        ..Default::default()
    })
}

/// Prints `MOUNT <mountpoint> <fstype>` for `/`, `/rom` and `/overlay`.
const SHOW_MOUNTS: &str =
    "while read dev mp fs rest; do case $mp in /|/rom|/overlay) echo MOUNT $mp $fs;; esac; done < /proc/mounts";

/// Prints `MODULE <name>` for every loaded kernel module.
const LIST_MODULES: &str = "while read name rest; do echo MODULE $name; done < /proc/modules";

fn loaded_modules(result: &BootResult) -> Vec<&str> {
    result.output_values("MODULE ")
}

#[test]
fn squashfs_lower_tmpfs_upper_forgets_writes_at_reboot() {
    let a = artifacts();
    let first = boot_with(
        vec![Disk::ro(&a.root_sqsh)],
        "",
        &format!(
            "{SHOW_MOUNTS}; echo written > /etc/new-file; echo CONTENT=$(cat /etc/new-file); test -d /rom/etc; {LIST_MODULES}; echo OPTS=$(grep -o lowerdir=[^,]*,upperdir=[^,]* /proc/mounts)"
        ),
    );
    assert_test_passed(&first);
    assert_output(&first, "MOUNT / overlay");
    assert_output(&first, "MOUNT /rom squashfs");
    assert_output(&first, "MOUNT /overlay tmpfs");
    assert_output(&first, "CONTENT=written");
    // The overlay's options name paths that exist in the new root.
    assert_output(&first, "OPTS=lowerdir=/rom,upperdir=/overlay/upper");
    // Filesystem drivers load when a mount needs them: no erofs, no loop here.
    let modules = loaded_modules(&first);
    for needed in ["virtio_blk", "squashfs", "overlay"] {
        assert!(
            modules.contains(&needed),
            "{needed} not loaded: {modules:?}"
        );
    }
    for unused in ["erofs", "libcrc32c", "loop"] {
        assert!(
            !modules.contains(&unused),
            "{unused} loaded for nothing: {modules:?}"
        );
    }

    let second = boot_with(
        vec![Disk::ro(&a.root_sqsh)],
        "",
        "echo NEW-FILE=$(test -e /etc/new-file && echo present || echo absent)",
    );
    assert_test_passed(&second);
    assert_output(&second, "NEW-FILE=absent");
}

#[test]
fn ext4_lower_tmpfs_upper() {
    let a = artifacts();
    let result = boot_with(
        vec![Disk::ro(&a.root_ext4)],
        "ovl.size=32M",
        &format!("{SHOW_MOUNTS}; echo ok > /x; cat /x; grep -o size=[0-9a-z]* /proc/mounts"),
    );
    assert_test_passed(&result);
    assert_output(&result, "MOUNT / overlay");
    assert_output(&result, "MOUNT /rom ext4");
    assert_output(&result, "size=32768k");
    assert_marker(&result, "lower: /dev/vda (ext4) read-only");
}

#[test]
fn erofs_lower_with_explicit_rootfstype() {
    let a = artifacts();
    let result = boot_with(
        vec![Disk::ro(&a.root_erofs)],
        "rootfstype=erofs",
        SHOW_MOUNTS,
    );
    assert_test_passed(&result);
    assert_output(&result, "MOUNT /rom erofs");
}

#[test]
fn ext4_upper_persists_across_boots_in_overlay_upper() {
    ext4_upper_persists(Arch::X86_64);
}

#[test]
fn ext4_upper_persists_across_boots_in_overlay_upper_aarch64() {
    ext4_upper_persists(Arch::Aarch64);
}

fn ext4_upper_persists(arch: Arch) {
    let a = artifacts_for(arch);
    let scratch = Scratch::new("boot-persist");
    let upper = fresh_copy(&a.upper_ext4, &scratch, "upper.ext4");
    let disks = || vec![Disk::ro(&a.root_sqsh), Disk::rw(&upper)];

    let first = boot_on(
        arch,
        disks(),
        "ovl.upper=/dev/vdb",
        &format!("{SHOW_MOUNTS}; echo MACHINE=$(uname -m); echo boot-one > /root/kept; sync"),
    );
    assert_test_passed(&first);
    assert_output(&first, "MOUNT /overlay ext4");
    // The guest really is `arch` (uname -m names the machine as Arch::name does).
    assert_eq!(
        first.output_values("MACHINE="),
        [arch.name()],
        "not an {} guest\n{first:?}",
        arch.name()
    );

    let second = boot_on(
        arch,
        disks(),
        "ovl.upper=/dev/vdb",
        "echo KEPT=$(cat /root/kept)",
    );
    assert_test_passed(&second);
    assert_output(&second, "KEPT=boot-one");

    // On the disk itself, the file sits in upper/ (read without mounting).
    assert_eq!(
        ext4_read_file(&upper, "/upper/root/kept").as_deref(),
        Some(&b"boot-one\n"[..])
    );
    let top = ext4_list_dir(&upper, "/").expect("root directory of the upper");
    assert!(
        top.iter().any(|n| n == "work"),
        "no work/ on the upper: {top:?}"
    );
}

/// The arm64 initramfs's default module set carries both virtio transports of QEMU's virt
/// board: a root on a virtio-mmio slot (`-device virtio-blk-device`, what most arm64 guides
/// use) boots as well as the virtio-blk-pci disks of the other tests.
#[test]
fn aarch64_root_on_a_virtio_mmio_disk() {
    let a = artifacts_for(Arch::Aarch64);
    let mut lower = Disk::ro(&a.root_sqsh);
    lower.mmio = true;
    let result = boot_on(
        Arch::Aarch64,
        vec![lower],
        "",
        &format!("{SHOW_MOUNTS}; {LIST_MODULES}; echo DRIVER=$(basename $(readlink /sys/block/vda/device/driver))"),
    );
    assert_test_passed(&result);
    assert_output(&result, "MOUNT /rom squashfs");
    assert_output(&result, "DRIVER=virtio_blk");
    let modules = loaded_modules(&result);
    assert!(
        modules.contains(&"virtio_mmio"),
        "virtio_mmio not loaded: {modules:?}"
    );
}

#[test]
fn two_lowers_topmost_wins() {
    let a = artifacts();
    let scratch = Scratch::new("boot-two-lowers");
    let extra_dir = scratch.join("extra");
    write_file(
        &extra_dir.join("only-in-extra"),
        "from the extra layer\n",
        0o644,
    );
    // Both layers hold /etc/hostname; the main lower is on top and wins.
    write_file(&extra_dir.join("etc/hostname"), "extra-layer\n", 0o644);
    let extra = scratch.join("extra.sqsh");
    make_squashfs(&extra_dir, &extra);
    let main_hostname = std::fs::read_to_string(a.root_dir.join("etc/hostname"))
        .expect("the demo root has /etc/hostname");

    let result = boot_with(
        vec![Disk::ro(&a.root_sqsh), Disk::ro(&extra)],
        "ovl.lower=/dev/vdb",
        "echo EXTRA=$(cat /only-in-extra); echo HOST=$(cat /etc/hostname); echo HAS-BUSYBOX=$(test -x /bin/busybox && echo yes)",
    );
    assert_test_passed(&result);
    assert_output(&result, "EXTRA=from the extra layer");
    assert_output(&result, &format!("HOST={}", main_hostname.trim()));
    assert_output(&result, "HAS-BUSYBOX=yes");
}

#[test]
fn real_init_is_pid1_with_args_and_the_initramfs_is_freed() {
    let a = artifacts();
    let result = boot(&BootSpec {
        append: "root=/dev/vda init=/sbin/test-init -- \"echo ARGC=$#; echo PID=$$; echo INIT=$(test -e /init && echo present || echo absent); echo STAGING=$(test -e /sysroot && echo present || echo absent)\" second-arg".into(),
        disks: vec![Disk::ro(&a.root_sqsh)],

        ..Default::default()
    });
    assert_test_passed(&result);
    // test-init runs "$*" as a script: its own pid and both arguments arrive.
    assert_marker(&result, "OVLTEST: pid=1 args=echo ARGC");
    assert_marker(&result, "second-arg");
    assert_output(&result, "PID=1");
    assert_output(&result, "INIT=absent");
    assert_output(&result, "STAGING=absent");
    // Freed after the switch, through a descriptor of the old root: the new root has moved
    // away, so no mount point is left in it and nothing is kept.
    let freed = result.values("initramfs freed: ");
    let line = freed
        .first()
        .unwrap_or_else(|| panic!("no 'initramfs freed' line\n{result:?}"));
    let removed: u64 = line.split(' ').next().unwrap().parse().unwrap();
    assert!(result.contains("peak memory "), "{result:?}");
    assert!(
        removed >= 14,
        "init, console, index and 11 modules at least: {line}"
    );
    assert!(line.contains(", 0 kept"), "{line}");
}

/// A module tree whose modules are all `.ko.zst` (as Arch, Fedora or Ubuntu ship them): the
/// builder reads their dependencies and by default stores them decompressed, so Debian's
/// kernel, which cannot decompress modules itself, boots just as with the plain tree.
#[test]
fn zstd_compressed_module_tree_boots_like_the_plain_one() {
    use overlay_init::initramfs::resolve::{resolve, DEFAULT_MODULES};
    use overlay_init::initramfs::tree::FsModuleTree;
    use std::fs;
    use std::process::Command;

    let a = artifacts();
    let scratch = Scratch::new("boot-zstd-modules");
    let plain = &a.kernel.modules;
    let compressed = scratch.join("lib/modules").join(plain.file_name().unwrap());
    fs::create_dir_all(&compressed).unwrap();
    for list in ["modules.builtin", "modules.builtin.modinfo"] {
        fs::copy(plain.join(list), compressed.join(list)).unwrap();
    }
    let wanted: Vec<String> = DEFAULT_MODULES.iter().map(|m| m.to_string()).collect();
    let resolution = resolve(&mut FsModuleTree::open(plain).unwrap(), &wanted).unwrap();
    for module in &resolution.modules {
        let copy = compressed.join(module.path.strip_prefix(plain).unwrap());
        fs::create_dir_all(copy.parent().unwrap()).unwrap();
        fs::copy(&module.path, &copy).unwrap();
        run(Command::new("zstd").args(["-q", "--rm"]).arg(&copy));
    }
    let initramfs = scratch.join("initramfs.cpio.gz");
    run(Command::new(repo_dir().join("initramfs/build"))
        .arg("--init")
        .arg(&a.init)
        .arg("--modules")
        .arg(&compressed)
        .arg("-o")
        .arg(&initramfs));

    let result = boot(&BootSpec {
        append: format!(
            "root=/dev/vda {}",
            test_init_args(&format!("{SHOW_MOUNTS}; {LIST_MODULES}"))
        ),
        disks: vec![Disk::ro(&a.root_erofs)],
        initrd: Initrd::Path(initramfs),
        ..Default::default()
    });
    assert_test_passed(&result);
    assert_output(&result, "MOUNT / overlay");
    assert_output(&result, "MOUNT /rom erofs");
    let modules = loaded_modules(&result);
    for needed in ["virtio_blk", "erofs", "libcrc32c", "overlay"] {
        assert!(
            modules.contains(&needed),
            "{needed} not loaded: {modules:?}"
        );
    }
}
