//! A verified lower in QEMU (issue 16): `ovl.verity=ROOTHASH` makes overlay-init mount the
//! lower from a dm-verity device it sets up itself (no veritysetup in the initramfs), on
//! Debian's cloud kernel with dm_mod and dm_verity loaded on demand from the initramfs.
//! The images are made here with `veritysetup format`: the demo root plus `/data/late.bin`
//! (incompressible noise), as a squashfs with uncompressed data blocks (`-noD`), so a byte
//! of a given file can be found in the image and flipped after the hash tree was computed.
//!
//! Eight boots:
//! - right root hash, tree on a partition of its own (`ovl.verity_hash=PARTLABEL=`, found by
//!   the device wait), one byte of `/data/late.bin` flipped: boots; `/rom` is on
//!   `/dev/mapper/ovl-lower`; reading `late.bin` gives EIO and the system stays up;
//!   `overlay-init status` names the root hash; a second boot keeps a file on the ext4 upper;
//! - appended trees: an `ovl.image=` file with its tree at `ovl.verity_hashoffset=`, and an
//!   extra lower disk `ovl.lower=/dev/vdb@ROOTHASH` (its tree found after the squashfs), with
//!   `ovl.verity_onerror=restart`: switched on after the boot is counted, a byte flipped in
//!   `/data/late.bin` of the image restarts the machine when it is read;
//! - a wrong root hash: the lower is not mounted, the failure handler names the device and
//!   the hash, no kernel panic;
//! - one byte flipped in `/bin/busybox` (what `/sbin/init` links to): the init is read back
//!   through verity before the handover, the boot fails naming dm-verity, no kernel panic;
//! - `ovl.verity_onerror=restart` with the boot counter (`ovl.maxtries=2`, an ext4 upper): a bad
//!   block the system reads at every boot restarts the machine in two counted boots; the third
//!   is the failsafe boot, which keeps dm-verity at eio and comes up (three boots).
//!
//! Run: `OVL_QEMU_JOBS=1 cargo test --test qemu verity::` (as root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// `MOUNT <mountpoint> <fstype> <ro|rw> <source>` for the mounts these tests look at.
const SHOW_MOUNTS: &str = "while read dev mp fs opts rest; do case $mp in /rom|/overlay|/run/overlay-init/*) echo MOUNT $mp $fs ${opts%%,*} $dev;; esac; done < /proc/mounts";

/// A squashfs of `tree` with uncompressed data blocks: file bytes appear as they are.
fn squashfs_plain(tree: &Path, out: &Path) {
    let _ = fs::remove_file(out);
    run(Command::new("mksquashfs").arg(tree).arg(out).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-noD",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]));
}

/// The one offset of `needle` in `haystack`.
fn find_once(haystack: &[u8], needle: &[u8], what: &str) -> usize {
    let mut hits = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at);
    let first = hits
        .next()
        .unwrap_or_else(|| panic!("{what} not stored uncompressed"));
    assert_eq!(hits.next(), None, "{what} is in the image twice");
    first
}

fn mib_for(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len().div_ceil(1 << 20) + 1
}

/// The root images: `data` (clean), its separate tree `hash`, `late_flipped` (one byte of
/// `/data/late.bin` changed), `init_flipped` (one byte in the middle of `/bin/busybox`).
struct Images {
    data: PathBuf,
    hash: PathBuf,
    late_flipped: PathBuf,
    init_flipped: PathBuf,
    root_hash: String,
    /// Where the flipped byte of `late_flipped` is.
    late_byte: usize,
}

impl Images {
    fn new(scratch: &Scratch) -> Images {
        let a = artifacts();
        let tree = scratch.join("tree");
        copy_tree(&a.root_dir, &tree);
        let late = noise(256 * 1024, 0x9e3779b97f4a7c15);
        write_file(&tree.join("data/late.bin"), &late, 0o644);
        let data = scratch.join("root.sqsh");
        squashfs_plain(&tree, &data);
        let hash = scratch.join("root.verity");
        let root_hash = veritysetup_format(&data, &hash, &[]);

        let image = fs::read(&data).unwrap();
        let late_at = find_once(&image, &late[200 * 1024..200 * 1024 + 64], "late.bin");
        let late_flipped = scratch.join("root-late-flipped.sqsh");
        flipped_copy(&data, late_at + 10, &late_flipped);
        let busybox = fs::read(tree.join("bin/busybox")).unwrap();
        let mid = busybox.len() / 2;
        let init_at = find_once(&image, &busybox[mid..mid + 64], "busybox");
        let init_flipped = scratch.join("root-init-flipped.sqsh");
        flipped_copy(&data, init_at + 10, &init_flipped);
        Images {
            data,
            hash,
            late_flipped,
            init_flipped,
            root_hash,
            late_byte: late_at + 10,
        }
    }

    /// A GPT disk: partition `root` holds `data`, partition `root-verity` the tree.
    fn disk(&self, scratch: &Scratch, data: &Path, name: &str) -> PathBuf {
        let disk = scratch.join(name);
        make_gpt_disk(
            &disk,
            &[
                GptPartition::new("root", mib_for(data), Some(data)),
                GptPartition::new("root-verity", mib_for(&self.hash), Some(&self.hash)),
            ],
        );
        disk
    }
}

fn verity_boot(disks: Vec<Disk>, append: String) -> BootResult {
    boot(&BootSpec {
        append,
        disks,
        ..Default::default()
    })
}

fn separate_tree_args(root_hash: &str) -> String {
    format!("root=PARTLABEL=root ovl.verity={root_hash} ovl.verity_hash=PARTLABEL=root-verity")
}

#[test]
fn verified_lower_boots_persists_and_a_late_bad_block_gives_eio() {
    let scratch = Scratch::new("verity-good");
    let images = Images::new(&scratch);
    let disk = images.disk(&scratch, &images.late_flipped, "disk.img");
    let upper = fresh_copy(&artifacts().upper_ext4, &scratch, "upper.ext4");
    let disks = || vec![Disk::ro(&disk), Disk::rw(&upper)];
    let args = separate_tree_args(&images.root_hash);

    let first = verity_boot(
        disks(),
        format!(
            "{args} ovl.upper=/dev/vdb {}",
            test_init_args(&format!(
                "{SHOW_MOUNTS}; echo DM-NAME=$(cat /sys/block/dm-0/dm/name); \
                 cat /data/late.bin > /dev/null 2> /tmp/err && echo LATE-READ-OK; \
                 echo LATE-ERR=$(cat /tmp/err); \
                 head -c 4096 /data/late.bin > /dev/null && echo LATE-HEAD-OK; \
                 /sbin/overlay-init status; \
                 echo boot-one > /root/kept; sync; echo STILL-UP"
            ))
        ),
    );
    assert_test_passed(&first);
    assert_marker(
        &first,
        "dm-verity: /dev/mapper/ovl-lower verifies /dev/vda1",
    );
    assert_output(&first, "MOUNT /rom squashfs ro /dev/mapper/ovl-lower");
    assert_output(&first, "DM-NAME=ovl-lower");
    assert_output(&first, "MOUNT /overlay ext4 rw /dev/vdb");
    // The flipped byte: the reader gets EIO, other blocks of the file still read.
    assert_no_output(&first, "LATE-READ-OK");
    let err = first.output_values("LATE-ERR=").join(" ");
    assert!(
        err.contains("I/O error") || err.contains("Input/output error"),
        "reading the corrupted file did not fail with EIO: {err:?}\n{first:?}"
    );
    assert_output(&first, "LATE-HEAD-OK");
    assert_marker(&first, "device-mapper: verity");
    assert_output(
        &first,
        &format!(
            "lower: verified by dm-verity, root hash {}",
            images.root_hash
        ),
    );
    assert_output(&first, "STILL-UP");
    assert_no_marker(&first, "Kernel panic");

    let second = verity_boot(
        disks(),
        format!(
            "{args} ovl.upper=/dev/vdb {}",
            test_init_args("echo KEPT=$(cat /root/kept)")
        ),
    );
    assert_test_passed(&second);
    assert_output(&second, "KEPT=boot-one");
}

/// Also `ovl.verity_onerror=restart`: switched on once the boot is counted (the devices are set
/// up with eio), it restarts the machine when the flipped byte of `/data/late.bin` is read.
#[test]
fn appended_trees_image_file_with_hashoffset_and_extra_lower_with_roothash() {
    let scratch = Scratch::new("verity-appended");
    let images = Images::new(&scratch);
    // The root image file with its tree appended at its own size, then a byte of
    // /data/late.bin flipped.
    let clean = scratch.join("root-clean.img");
    fs::copy(&images.data, &clean).unwrap();
    let offset = fs::metadata(&clean).unwrap().len().to_string();
    let root_hash = veritysetup_format(&clean, &clean, &[&format!("--hash-offset={offset}")]);
    let root_img = scratch.join("root.img");
    flipped_copy(&clean, images.late_byte, &root_img);
    // The extra lower: a squashfs with its tree appended, as a disk of its own.
    let extra = extra_lower_image(&scratch);
    let extra_offset = fs::metadata(&extra).unwrap().len().to_string();
    let extra_hash =
        veritysetup_format(&extra, &extra, &[&format!("--hash-offset={extra_offset}")]);

    let holding_tree = scratch.join("holding");
    fs::create_dir_all(holding_tree.join("images")).unwrap();
    fs::copy(&root_img, holding_tree.join("images/root.img")).unwrap();
    let holding = scratch.join("holding.ext4");
    let size = mib_for(&root_img) + 8;
    make_ext4(&holding, size, Some(&holding_tree), &["-L", "images"]);

    let result = verity_boot(
        vec![Disk::ro(&holding), Disk::ro(&extra)],
        format!(
            "root=LABEL=images ovl.image=/images/root.img ovl.verity={root_hash} \
             ovl.verity_hashoffset={offset} ovl.lower=/dev/vdb@{extra_hash} \
             ovl.verity_onerror=restart {}",
            test_init_args(&format!(
                "{SHOW_MOUNTS}; echo EXTRA=$(cat /only-in-extra); \
                 /sbin/overlay-init status; echo READING-LATE; \
                 cat /data/late.bin > /dev/null; echo NOT-RESTARTED"
            ))
        ),
    );
    assert_marker(&result, "OVLTEST: pid=");
    assert_marker(
        &result,
        "dm-verity ovl-lower: ovl.verity_onerror=restart from now on",
    );
    assert_marker(
        &result,
        "dm-verity ovl-lower-1: ovl.verity_onerror=restart from now on",
    );
    assert_output(&result, "READING-LATE");
    assert_no_output(&result, "NOT-RESTARTED");
    assert_marker(&result, "is corrupted");
    assert_exit(&result, Exit::Reboot);
    assert_output(&result, "MOUNT /rom squashfs ro /dev/mapper/ovl-lower");
    assert_output(
        &result,
        "MOUNT /run/overlay-init/lower0 squashfs ro /dev/mapper/ovl-lower-1",
    );
    assert_output(
        &result,
        "MOUNT /run/overlay-init/image-host ext4 ro /dev/vda",
    );
    assert_output(&result, "EXTRA=from the extra image");
    assert_marker(
        &result,
        "dm-verity: /dev/mapper/ovl-lower verifies /dev/loop",
    );
    assert_marker(
        &result,
        "dm-verity: /dev/mapper/ovl-lower-1 verifies /dev/vdb",
    );
    assert_output(
        &result,
        &format!("lower: verified by dm-verity, root hash {root_hash}"),
    );
}

#[test]
fn wrong_root_hash_does_not_mount_the_lower() {
    let scratch = Scratch::new("verity-wrong");
    let images = Images::new(&scratch);
    let disk = images.disk(&scratch, &images.data, "disk.img");
    let mut wrong = images.root_hash.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();

    let result = verity_boot(
        vec![Disk::ro(&disk)],
        format!(
            "{} ovl.onfail=halt {}",
            separate_tree_args(&wrong),
            test_init_args("true")
        ),
    );
    assert_marker(&result, "overlay-init: BOOT FAILED");
    assert_marker(&result, "* step: lower");
    assert_marker(
        &result,
        &format!("the first block of /dev/vda1 does not verify against root hash {wrong}"),
    );
    assert_marker(&result, "hash tree on /dev/vda2");
    assert_no_marker(&result, "OVLTEST: pid=");
    assert_no_marker(&result, "Kernel panic");
    assert_exit(&result, Exit::PowerOff);
}

#[test]
fn a_bad_block_in_the_init_stops_the_boot_without_a_panic() {
    let scratch = Scratch::new("verity-init");
    let images = Images::new(&scratch);
    let disk = images.disk(&scratch, &images.init_flipped, "disk.img");

    // The default init, /sbin/init -> /bin/busybox.
    let result = verity_boot(
        vec![Disk::ro(&disk)],
        format!("{} ovl.onfail=halt", separate_tree_args(&images.root_hash)),
    );
    assert_marker(&result, "overlay-init: BOOT FAILED");
    assert_marker(&result, "* step: check init");
    assert_marker(
        &result,
        "the real init /sbin/init does not read back through dm-verity",
    );
    assert_marker(&result, "the kernel log names it");
    assert_marker(&result, "is corrupted");
    assert_no_marker(&result, "handover to");
    assert_no_marker(&result, "Kernel panic");
    assert_exit(&result, Exit::PowerOff);
}

/// `ovl.verity_onerror=restart` and the boot counter: the system reads a file with a bad block
/// at every boot (here the test command, standing for a service). Each normal boot is counted
/// on the upper before verity is switched to restart, so the restarts count: with
/// `ovl.maxtries=2` the third boot is the failsafe boot, which keeps verity at eio, so the same
/// read gives EIO and the device comes up (in failsafe, saying why) instead of looping.
/// QEMU runs with `-no-reboot`: a restart ends the run, and the next run on the same disks is
/// the next boot.
#[test]
fn restart_on_a_bad_block_ends_in_the_failsafe_boot_not_a_loop() {
    let scratch = Scratch::new("verity-restart-counter");
    let images = Images::new(&scratch);
    let disk = images.disk(&scratch, &images.late_flipped, "disk.img");
    let upper = fresh_copy(&artifacts().upper_ext4, &scratch, "upper.ext4");
    let append = format!(
        "{} ovl.upper=/dev/vdb ovl.maxtries=2 ovl.verity_onerror=restart {}",
        separate_tree_args(&images.root_hash),
        test_init_args(
            "/sbin/overlay-init status; echo READING-LATE; \
             cat /data/late.bin > /dev/null 2> /tmp/err; echo LATE-ERR=$(cat /tmp/err); \
             echo STILL-UP"
        )
    );
    let boot_once = || verity_boot(vec![Disk::ro(&disk), Disk::rw(&upper)], append.clone());

    for attempt in 1..=2 {
        // A normal boot: the read of the bad block restarts the machine.
        let result = boot_once();
        assert_output(&result, "READING-LATE");
        assert_no_output(&result, "STILL-UP");
        assert_exit(&result, Exit::Reboot);
        assert_marker(&result, "is corrupted");
        assert_no_marker(&result, "Kernel panic");
        assert_output(&result, "mode: normal");
        assert_output(
            &result,
            &format!("boot attempts since mark-good: {attempt} of 2"),
        );
        assert_marker(
            &result,
            "dm-verity ovl-lower: ovl.verity_onerror=restart from now on",
        );
        assert_eq!(
            ext4_read_file(&upper, "/.overlay-init/bootcount"),
            Some(format!("attempts={attempt}\n").into_bytes()),
            "the restarted boot {attempt} was not counted\n{result:?}"
        );
    }

    // The point: this boot reads the same bad block and comes up, it does not restart again.
    let result = boot_once();
    assert_ne!(
        result.exit,
        Exit::Reboot,
        "the failsafe boot restarted too: a boot loop\n{result:?}"
    );
    assert_output(&result, "STILL-UP");
    assert_test_passed(&result);
    let err = result.output_values("LATE-ERR=").join(" ");
    assert!(
        err.contains("I/O error") || err.contains("Input/output error"),
        "the failsafe boot did not get EIO for the bad block: {err:?}\n{result:?}"
    );
    assert_marker(&result, "is corrupted");
    assert_no_marker(&result, "Kernel panic");
    assert_output(
        &result,
        "mode: failsafe (2 boots without `overlay-init mark-good` (ovl.maxtries=2))",
    );
    assert_marker(&result, "WARNING: FAILSAFE boot");
    assert_marker(
        &result,
        "failsafe: dm-verity stays at eio (ovl.verity_onerror=restart is for normal boots)",
    );
    assert_no_marker(&result, "ovl.verity_onerror=restart from now on");
    assert_eq!(
        ext4_read_file(&upper, "/.overlay-init/bootcount"),
        Some(b"attempts=2\n".to_vec()),
        "a failsafe boot does not count"
    );
}
