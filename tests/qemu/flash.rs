//! Flash uppers on the router kernel (issue 14), as OpenWrt names them: JFFS2 on an MTD
//! partition (`ovl.upper=mtd:NAME`) and UBIFS on a UBI volume of an MTD partition that
//! overlay-init attaches itself (`ovl.ubiattach=mtd:NAME ovl.upper=ubi:VOLUME`).
//!
//! The flash is simulated with block2mtd over a second virtio disk
//! (`block2mtd.block2mtd=/dev/vdb,128KiB,rootfs_data`: an MTD partition named `rootfs_data`
//! with 128 KiB erase blocks), which, unlike mtdram, survives a reboot. The root is the test
//! squashfs as `/dev/vda`, mounted by the kernel itself (router mode).
//!
//! Each test: boot 1 prepares the flash and removes a lower file (whiteout), replaces a lower
//! directory (rmdir + mkdir: opaque) and writes a file (on JFFS2 it also renames a lower
//! file: a whiteout made by the rename itself); boot 2 sees all of it; a factory reset
//! (`ovl.reset`) gives the lower's state back.
//!
//! Run: `cargo test --test qemu flash::` (9 boots; builds the router kernel on first use).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(120);
const ERASE_BLOCK: usize = 128 * 1024;

/// Prints `MOUNT <mountpoint> <fstype> <ro|rw>` for `/` and `/overlay`.
const SHOW_MOUNTS: &str =
    "while read dev mp fs opts rest; do case $mp in /|/overlay) echo MOUNT $mp $fs ${opts%%,*};; esac; done < /proc/mounts";

/// What boot 1 changes: a file written, a lower file removed, a lower directory replaced.
const CHANGES: &str = "rm /etc/motd && rm -r /etc/init.d && mkdir /etc/init.d && \
     echo new > /etc/init.d/only && echo boot-one > /root/kept && sync";

/// What boot 2 and the reset boot check: the file written, the lower file removed
/// (whiteout), the lower directory replaced (opaque).
const CHECK: &str = "echo KEPT=$(cat /root/kept 2>/dev/null || echo gone); \
     echo MOTD=$(test -e /etc/motd && echo back || echo gone); \
     echo INITD=$(ls /etc/init.d | tr '\\n' ' ')";

fn flash_boot(flash: &Path, params: &str, script: &str) -> BootResult {
    assert!(!script.contains('"'), "{script}");
    let result = boot(&BootSpec {
        kernel: Some(router_kernel().to_path_buf()),
        initrd: Initrd::None,
        disks: vec![Disk::ro(&artifacts().root_sqsh), Disk::rw(flash)],
        append: format!(
            "root=/dev/vda rootfstype=squashfs init=/sbin/overlay-init \
             block2mtd.block2mtd=/dev/vdb,128KiB,rootfs_data {params} \
             ovl.init=/sbin/test-init -- \"{script}\""
        ),
        timeout: TIMEOUT,
        ..Default::default()
    });
    assert_ne!(result.exit, Exit::Panic, "the kernel panicked\n{result:?}");
    result
}

/// N of the `mtdN` block2mtd made of `/dev/vdb`, as the kernel announced it
/// (`block2mtd: mtd1: [rootfs_data] erase_size = 128KiB [131072]`; mtd0 is the router
/// kernel's mtdram).
fn rootfs_data_mtd(result: &BootResult) -> u32 {
    let line = result
        .console
        .lines()
        .find(|l| l.contains("block2mtd: mtd") && l.contains("[rootfs_data]"))
        .unwrap_or_else(|| panic!("block2mtd did not announce rootfs_data\n{result:?}"));
    let number = line.split("block2mtd: mtd").nth(1).unwrap();
    number[..number.find(':').unwrap()].parse().unwrap()
}

/// The boot's own timing lines, for the test log (`--nocapture`; docs/flash.md quotes them).
fn print_timings(label: &str, result: &BootResult) {
    const TIMED: [&str; 5] = [
        "erased mtd:",
        "attached mtd",
        "created the UBI volume",
        "formatted ubi",
        "handover to",
    ];
    for line in result.console.lines() {
        if TIMED.iter().any(|marker| line.contains(marker)) {
            eprintln!("{label}: {}", line.trim());
        }
    }
}

/// An 8 MiB NOR partition as OpenWrt's sysupgrade leaves it: an old JFFS2 (holding
/// `upper/stale`, which would show as `/stale` if it were mounted) whose first bytes were
/// overwritten with the `deadc0de` marker; erased (0xFF) after it.
fn deadc0de_partition(scratch: &Scratch) -> std::path::PathBuf {
    let old = scratch.join("old-tree");
    tree(&old, &[("upper/stale", "from the previous firmware\n")]);
    let old_image = scratch.join("old.jffs2");
    run(Command::new("mkfs.jffs2")
        .arg("--root")
        .arg(&old)
        .arg("--output")
        .arg(&old_image)
        .args(["--little-endian", "--eraseblock=128KiB", "--squash"]));
    let mut flash = vec![0xFFu8; 64 * ERASE_BLOCK];
    let old_bytes = std::fs::read(&old_image).unwrap();
    flash[..old_bytes.len()].copy_from_slice(&old_bytes);
    flash[..4].copy_from_slice(&[0xde, 0xad, 0xc0, 0xde]);
    let path = scratch.join("flash.img");
    std::fs::write(&path, flash).unwrap();
    path
}

/// JFFS2 on `mtd:rootfs_data`: with `ovl.format=never` the partition that starts with
/// `deadc0de` is left as it is (same bytes, tmpfs upper); boot 1 erases it (the old JFFS2
/// behind the marker is gone), removes a lower file (whiteout), replaces a lower directory
/// (opaque), renames a lower file and writes a file; boot 2 sees all of it and erases
/// nothing; `ovl.reset` gives the lower's state back.
///
/// Mainline JFFS2 has neither `RENAME_EXCHANGE` (overlayfs needs it to make a directory
/// opaque and to remove a copied-up directory) nor `RENAME_WHITEOUT` (to rename a lower
/// file): the router kernel carries the project's patch for both
/// (`qemu/router-kernel/jffs2-rename-exchange-whiteout.patch`). Without it `rm -r
/// /etc/init.d` and `mv /etc/demo-release ...` fail with EINVAL and this test fails.
#[test]
fn jffs2_on_mtd_is_erased_once_and_keeps_whiteouts_and_opaque_dirs() {
    let scratch = Scratch::new("flash-jffs2");
    let flash = deadc0de_partition(&scratch);
    let params = "ovl.upper=mtd:rootfs_data";

    // ovl.format=never: nothing is erased, the boot goes on on a tmpfs upper.
    let before = std::fs::read(&flash).unwrap();
    let never = flash_boot(
        &flash,
        &format!("{params} ovl.format=never"),
        &format!("{SHOW_MOUNTS}; echo x > /etc/x && sync"),
    );
    assert_marker(
        &never,
        "WARNING: persistent upper not used, booting on a tmpfs upper",
    );
    assert_marker(
        &never,
        "it starts with the deadc0de marker and ovl.format=never: not erased",
    );
    assert_no_marker(&never, "erasing mtd:");
    assert_output(&never, "MOUNT /overlay tmpfs rw");
    assert_test_passed(&never);
    assert!(
        std::fs::read(&flash).unwrap() == before,
        "ovl.format=never wrote to the flash\n{never:?}"
    );

    let first = flash_boot(
        &flash,
        params,
        &format!(
            "{SHOW_MOUNTS}; echo STALE=$(cat /stale 2>/dev/null || echo absent); \
             {CHANGES} && mv /etc/demo-release /etc/demo-release.old && sync"
        ),
    );
    let mtd = format!("/dev/mtd{}", rootfs_data_mtd(&first));
    assert_marker(
        &first,
        &format!(
            "erasing mtd:rootfs_data ({mtd}, 8 MiB, 64 blocks of 128 KiB): \
             it starts with the deadc0de marker"
        ),
    );
    assert_marker(
        &first,
        &format!("erased mtd:rootfs_data ({mtd}, 8 MiB) in "),
    );
    assert_output(&first, "MOUNT /overlay jffs2 rw");
    assert_output(&first, "MOUNT / overlay rw");
    assert_output_line(&first, "STALE=absent");
    print_timings("jffs2 boot 1", &first);
    assert_no_marker(&first, "cannot exchange names");
    assert_test_passed(&first);

    let second = flash_boot(
        &flash,
        params,
        &format!("{SHOW_MOUNTS}; {CHECK}; {CHECK_RENAMED}"),
    );
    assert_no_marker(&second, "erasing mtd:");
    print_timings("jffs2 boot 2", &second);
    assert_output(&second, "MOUNT /overlay jffs2 rw");
    assert_output_line(&second, "KEPT=boot-one");
    assert_output_line(&second, "MOTD=gone");
    assert_output_line(&second, "INITD=only");
    assert_output_line(&second, "RELEASE=gone MOVED=overlay-init demo root");
    assert_test_passed(&second);

    let reset = flash_boot(
        &flash,
        &format!("{params} ovl.reset"),
        &format!("{CHECK}; {CHECK_RENAMED}"),
    );
    assert_no_marker(&reset, "erasing mtd:");
    assert_output_line(&reset, "KEPT=gone");
    assert_output_line(&reset, "MOTD=back");
    assert_output_line(&reset, "INITD=rcK rcS");
    assert_output_line(&reset, "RELEASE=overlay-init demo root MOVED=gone");
    assert_test_passed(&reset);
}

/// What a rename of the lower's `/etc/demo-release` left: the old name (a whiteout after the
/// rename) and the new one.
const CHECK_RENAMED: &str = "echo RELEASE=$(cat /etc/demo-release 2>/dev/null || echo gone) \
     MOVED=$(cat /etc/demo-release.old 2>/dev/null || echo gone)";

/// UBIFS: an erased (0xFF) partition is attached to UBI by overlay-init (`ovl.ubiattach=`;
/// the kernel formats it as it attaches), the volume `rootfs_data` is created with all the
/// free space, and UBIFS formats it at its first read-write mount; boot 2 attaches the same
/// UBI device and creates nothing; the reset boot lets the kernel attach it (`ubi.mtd=`).
#[test]
fn ubifs_volume_is_created_on_an_attached_mtd_and_keeps_whiteouts_and_opaque_dirs() {
    let scratch = Scratch::new("flash-ubifs");
    let flash = scratch.join("flash.img");
    std::fs::write(&flash, vec![0xFFu8; 64 * ERASE_BLOCK]).unwrap();
    let params = "ovl.ubiattach=mtd:rootfs_data ovl.upper=ubi:rootfs_data";

    let first = flash_boot(&flash, params, &format!("{SHOW_MOUNTS}; {CHANGES}"));
    let mtd = rootfs_data_mtd(&first);
    assert_marker(
        &first,
        &format!("attached mtd{mtd} (rootfs_data) as ubi0 in "),
    );
    assert_marker(
        &first,
        "created the UBI volume \"rootfs_data\" on ubi0 (volume 0, ",
    );
    assert_marker(&first, "formatted ubi0:rootfs_data (ubifs) in ");
    print_timings("ubifs boot 1", &first);
    assert_output(&first, "MOUNT /overlay ubifs rw");
    assert_output(&first, "MOUNT / overlay rw");
    assert_test_passed(&first);

    let second = flash_boot(&flash, params, &format!("{SHOW_MOUNTS}; {CHECK}"));
    assert_marker(
        &second,
        &format!("attached mtd{mtd} (rootfs_data) as ubi0 in "),
    );
    assert_no_marker(&second, "created the UBI volume");
    assert_no_marker(&second, "formatted ubi0:");
    print_timings("ubifs boot 2", &second);
    assert_output(&second, "MOUNT /overlay ubifs rw");
    assert_output_line(&second, "KEPT=boot-one");
    assert_output_line(&second, "MOTD=gone");
    assert_output_line(&second, "INITD=only");
    assert_test_passed(&second);

    // The reset boot has the kernel attach UBI (`ubi.mtd=`, OpenWrt's way): overlay-init only
    // waits for ubi0 and finds the volume.
    let reset = flash_boot(
        &flash,
        "ubi.mtd=rootfs_data ovl.upper=ubi0:rootfs_data ovl.reset",
        &format!("{SHOW_MOUNTS}; {CHECK}"),
    );
    assert_no_marker(&reset, "overlay-init: attached mtd");
    assert_no_marker(&reset, "created the UBI volume");
    assert_output(&reset, "MOUNT /overlay ubifs rw");
    assert_output_line(&reset, "KEPT=gone");
    assert_output_line(&reset, "MOTD=back");
    assert_output_line(&reset, "INITD=rcK rcS");
    assert_test_passed(&reset);
}

/// A random delay below `max` (RandomState is seeded from the OS).
fn random_delay(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    Duration::from_millis(hasher.finish() % max.as_millis() as u64)
}

/// Power cut during the JFFS2 erase: QEMU is killed (SIGKILL) at a random instant after the
/// init announces the erase (`OVL_FLASH_CUT_TRIALS`, default 1). Block 0 (with `deadc0de`) is
/// erased last, so the next boot finds the marker, or a cut block 0 with the rest erased, and
/// erases again, or finds the partition erased: it always ends on an empty JFFS2 upper, and
/// the old JFFS2 behind the marker never comes back.
#[test]
fn power_cut_during_the_jffs2_erase_never_leaves_an_unusable_upper() {
    let trials: usize = std::env::var("OVL_FLASH_CUT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for trial in 0..trials {
        let scratch = Scratch::new(&format!("flash-cut-{trial}"));
        let flash = deadc0de_partition(&scratch);
        let delay = random_delay(Duration::from_millis(800));
        let cut = boot(&BootSpec {
            kernel: Some(router_kernel().to_path_buf()),
            initrd: Initrd::None,
            disks: vec![Disk::ro(&artifacts().root_sqsh), Disk::rw(&flash)],
            append: "root=/dev/vda rootfstype=squashfs init=/sbin/overlay-init \
                     block2mtd.block2mtd=/dev/vdb,128KiB,rootfs_data ovl.upper=mtd:rootfs_data \
                     ovl.init=/sbin/test-init -- true"
                .into(),
            timeout: TIMEOUT,
            triggers: vec![Trigger {
                after: "erasing mtd:rootfs_data".into(),
                action: Action::Kill(delay),
            }],
            ..Default::default()
        });
        assert_marker(&cut, "erasing mtd:rootfs_data");
        assert_ne!(cut.exit, Exit::Panic, "the kernel panicked\n{cut:?}");
        let finished = cut.contains("erased mtd:rootfs_data");
        let next = flash_boot(
            &flash,
            "ovl.upper=mtd:rootfs_data",
            &format!(
                "{SHOW_MOUNTS}; echo STALE=$(cat /stale 2>/dev/null || echo absent); \
                 ls -A /overlay/upper | wc -l | grep -qx 0 && echo upper-empty"
            ),
        );
        eprintln!(
            "trial {trial}: killed {} ms after the announcement, erase {}; next boot {}",
            delay.as_millis(),
            if finished {
                "had finished"
            } else {
                "cut short"
            },
            next.console
                .lines()
                .find(|l| l.contains("erasing mtd:rootfs_data"))
                .map_or("used the partition".to_string(), |l| l.trim().to_string())
        );
        assert_no_marker(&next, "persistent upper not used");
        assert_output(&next, "MOUNT /overlay jffs2 rw");
        assert_output_line(&next, "STALE=absent");
        assert_output_line(&next, "upper-empty");
        assert_test_passed(&next);
    }
}
