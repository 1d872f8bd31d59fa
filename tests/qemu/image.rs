//! Image-file lowers in QEMU (issue 6), initramfs mode: `root=` names the partition holding
//! the image file, `ovl.image=PATH` the file on it. overlay-init mounts that partition
//! read-only at `/run/overlay-init/image-host`, attaches the file to a loop device read-only,
//! detects its filesystem and mounts it as the lower (`/rom`). File entries of `ovl.lower=`
//! are loop-mounted the same way, from the same partition.
//!
//! Run: `cargo test --test qemu image::` (as root; builds the artifacts on first use).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const IMAGE_HOST: &str = "/run/overlay-init/image-host";

/// `MOUNT <mountpoint> <fstype> <ro|rw> <source>` for the mounts these tests look at.
const SHOW_MOUNTS: &str = "while read dev mp fs opts rest; do case $mp in /|/rom|/overlay|/run/overlay-init/*) echo MOUNT $mp $fs ${opts%%,*} $dev;; esac; done < /proc/mounts";

/// Loop devices in use: `LOOP <name> ro=<0|1> <backing file>`.
const SHOW_LOOPS: &str = "for d in /sys/block/loop*; do test -e $d/loop/backing_file && echo LOOP ${d##*/} ro=$(cat $d/ro) $(cat $d/loop/backing_file); done";

/// An ext4 partition image labelled `images` holding `files` (source, path inside).
fn holding_partition(scratch: &Scratch, files: &[(&Path, &str)], size_mib: u64) -> PathBuf {
    let tree = scratch.join("holding");
    for (source, inside) in files {
        let target = tree.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(source, &target).unwrap();
    }
    let image = scratch.join("holding.ext4");
    make_ext4(&image, size_mib, Some(&tree), &["-L", "images"]);
    image
}

/// A GPT disk whose one partition is `partition`.
fn disk_with(scratch: &Scratch, partition: &Path, size_mib: u64) -> PathBuf {
    let disk = scratch.join("disk.img");
    make_gpt_disk(
        &disk,
        &[GptPartition::new("images", size_mib, Some(partition))],
    );
    disk
}

fn image_boot(disk: &Path, extra: &str, script: &str) -> BootResult {
    image_boot_on(Arch::X86_64, disk, extra, script)
}

/// [`image_boot`] on `arch`.
fn image_boot_on(arch: Arch, disk: &Path, extra: &str, script: &str) -> BootResult {
    boot(&BootSpec {
        arch,
        append: format!("root=LABEL=images {extra} {}", test_init_args(script)),
        disks: vec![Disk::ro(disk)],

        ..Default::default()
    })
}

#[test]
fn image_file_squashfs_on_ext4_partition_by_label_with_file_lower() {
    image_file_squashfs_with_file_lower(Arch::X86_64);
}

#[test]
fn image_file_squashfs_on_ext4_partition_by_label_with_file_lower_aarch64() {
    image_file_squashfs_with_file_lower(Arch::Aarch64);
}

fn image_file_squashfs_with_file_lower(arch: Arch) {
    let a = artifacts_for(arch);
    let scratch = Scratch::new("image-sqsh");
    let extra = extra_lower_image(&scratch);
    let holding = holding_partition(
        &scratch,
        &[
            (&a.root_sqsh, "/images/root.sqsh"),
            (&extra, "/images/extra.sqsh"),
        ],
        32,
    );
    let disk = disk_with(&scratch, &holding, 32);

    let result = image_boot_on(
        arch,
        &disk,
        "ovl.image=/images/root.sqsh ovl.lower=/images/extra.sqsh",
        &format!(
            "{SHOW_MOUNTS}; {SHOW_LOOPS}; \
             test -f {IMAGE_HOST}/images/root.sqsh && echo HOST-HAS-IMAGE; \
             touch {IMAGE_HOST}/x 2>/dev/null || echo HOST-NOT-WRITABLE; \
             echo EXTRA=$(cat /only-in-extra); test -x /rom/sbin/test-init && echo ROM-IS-ROOT; \
             echo new > /etc/new && echo OVERLAY-WRITABLE"
        ),
    );
    assert_test_passed(&result);
    assert_marker(&result, "ovl.image=/images/root.sqsh on /dev/vda1");
    assert_output(&result, "MOUNT / overlay rw");
    assert_output(&result, "MOUNT /rom squashfs ro /dev/loop");
    assert_output(&result, &format!("MOUNT {IMAGE_HOST} ext4 ro /dev/vda1"));
    assert_output(
        &result,
        "MOUNT /run/overlay-init/lower0 squashfs ro /dev/loop",
    );
    assert_output(&result, &format!("ro=1 {IMAGE_HOST}/images/root.sqsh"));
    assert_output(&result, &format!("ro=1 {IMAGE_HOST}/images/extra.sqsh"));
    assert_output(&result, "HOST-HAS-IMAGE");
    assert_output(&result, "HOST-NOT-WRITABLE");
    assert_output(&result, "EXTRA=from the extra image");
    assert_output(&result, "ROM-IS-ROOT");
    assert_output(&result, "OVERLAY-WRITABLE");
}

#[test]
fn image_file_ext4_made_with_dd_and_mkfs_on_ext4_partition() {
    let a = artifacts();
    let scratch = Scratch::new("image-ext4");
    // The classic way: a zeroed file, then mkfs.ext4 filling it from a directory.
    let root_image = scratch.join("root.ext4");
    run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", root_image.display()))
        .args(["bs=1M", "count=24", "status=none"]));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-L", "image-root", "-d"])
        .arg(&a.root_dir)
        .arg(&root_image));
    let holding = holding_partition(&scratch, &[(&root_image, "/images/root.ext4")], 48);
    let disk = disk_with(&scratch, &holding, 48);

    let result = image_boot(
        &disk,
        "ovl.image=/images/root.ext4",
        &format!(
            "{SHOW_MOUNTS}; {SHOW_LOOPS}; \
             test -f {IMAGE_HOST}/images/root.ext4 && echo HOST-HAS-IMAGE; \
             test -x /rom/sbin/test-init && echo ROM-IS-ROOT; \
             echo new > /etc/new && echo OVERLAY-WRITABLE"
        ),
    );
    assert_test_passed(&result);
    assert_output(&result, "MOUNT / overlay rw");
    assert_output(&result, "MOUNT /rom ext4 ro /dev/loop");
    assert_output(&result, &format!("MOUNT {IMAGE_HOST} ext4 ro /dev/vda1"));
    assert_output(&result, &format!("ro=1 {IMAGE_HOST}/images/root.ext4"));
    assert_output(&result, "HOST-HAS-IMAGE");
    assert_output(&result, "ROM-IS-ROOT");
    assert_output(&result, "OVERLAY-WRITABLE");
}

#[test]
fn image_file_missing_or_not_a_filesystem_fails_naming_the_file() {
    let scratch = Scratch::new("image-bad");
    let garbage = scratch.join("garbage.img");
    write_file(&garbage, vec![0x5a_u8; 256 * 1024], 0o644);
    let holding = holding_partition(&scratch, &[(&garbage, "/images/garbage.img")], 16);
    let disk = disk_with(&scratch, &holding, 16);

    let not_a_filesystem = image_boot(
        &disk,
        "ovl.image=/images/garbage.img ovl.onfail=halt",
        "true",
    );
    assert_marker(&not_a_filesystem, "overlay-init: BOOT FAILED");
    assert_marker(&not_a_filesystem, "* step: lower");
    assert_marker(&not_a_filesystem, "image file /images/garbage.img");
    assert_marker(
        &not_a_filesystem,
        "holds no filesystem overlay-init recognises",
    );
    assert_no_marker(&not_a_filesystem, "OVLTEST: pid=");
    assert_exit(&not_a_filesystem, Exit::PowerOff);

    let missing = image_boot(
        &disk,
        "ovl.image=/images/missing.sqsh ovl.onfail=halt",
        "true",
    );
    assert_marker(&missing, "* step: lower");
    assert_marker(&missing, "images/missing.sqsh");
    assert_no_marker(&missing, "OVLTEST: pid=");
    assert_exit(&missing, Exit::PowerOff);
}
