//! First boot on a blank upper device, in QEMU (issue 14): a zeroed or erased (0xFF) disk is
//! formatted once by the initramfs's mkfs (`initramfs/build --binary /sbin/mkfs.ext4`) and
//! then keeps what the system writes; a disk of random bytes or another filesystem is never
//! written (same hash before and after) and the boot goes on on a tmpfs upper. The case with
//! no mkfs anywhere is `qemu::failures::upper_of_zeros_without_a_mkfs_falls_back_to_tmpfs`.
//!
//! Run: `cargo test --test qemu firstboot::` (6 boots, plus the power-cut trials).

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;

/// overlay-init's initramfs plus the host's mkfs.ext4 with its libraries.
fn initramfs_with_mkfs() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let artifacts = artifacts();
        let out = work_dir().join("initramfs-mkfs.cpio.gz");
        run(Command::new(repo_dir().join("initramfs/build"))
            .arg("--init")
            .arg(&artifacts.init)
            .arg("--modules")
            .arg(&artifacts.kernel.modules)
            .args(["--binary", "/sbin/mkfs.ext4", "-o"])
            .arg(&out));
        out
    })
}

fn filled_file(path: &Path, byte: u8, size: u64) {
    std::fs::write(path, vec![byte; size as usize]).unwrap();
}

fn boot_upper(upper: &Path, initrd: Initrd, upper_spec: &str, script: &str) -> BootResult {
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh), Disk::rw(upper)],
        append: format!(
            "root=/dev/vda ovl.upper={upper_spec} {}",
            test_init_args(script)
        ),
        timeout: TIMEOUT,
        initrd,
        ..Default::default()
    });
    assert_ne!(result.exit, Exit::Panic, "the kernel panicked\n{result:?}");
    result
}

/// Boot 1 on the blank `upper`: formatted, persistent, a file written.
const WRITE_SCRIPT: &str = "grep -q '^/dev/vdb /overlay ext4 rw' /proc/mounts && \
     echo kept-from-first-boot > /etc/firstboot-note && sync && overlay-init status";

#[track_caller]
fn assert_formatted_and_written(upper: &Path) {
    let result = boot_upper(
        upper,
        Initrd::Path(initramfs_with_mkfs().clone()),
        "/dev/vdb",
        WRITE_SCRIPT,
    );
    assert_marker(
        &result,
        "formatted /dev/vdb (ext4, label overlay, 64 MiB) in ",
    );
    assert_no_marker(&result, "persistent upper not used");
    assert_test_passed(&result);
    // What the guest wrote is on the disk, in the upper layer.
    let note = ext4_read_file(upper, "/upper/etc/firstboot-note");
    assert_eq!(
        note.as_deref(),
        Some(&b"kept-from-first-boot\n"[..]),
        "the file written in the first boot is not on the upper\n{result:?}"
    );
}

/// A zeroed disk: formatted on boot 1; boot 2 (an initramfs without mkfs, the upper found by
/// the label the format gave it) reads the file and formats nothing.
#[test]
fn zeroed_upper_is_formatted_once_and_persists() {
    let scratch = Scratch::new("firstboot-zeroed");
    let upper = scratch.join("upper.img");
    filled_file(&upper, 0, 64 * MIB);
    assert_formatted_and_written(&upper);
    let before = sha256(&upper);
    let result = boot_upper(
        &upper,
        Initrd::Default,
        "LABEL=overlay",
        "grep -q ' /overlay ext4 rw' /proc/mounts && cat /etc/firstboot-note",
    );
    assert_output(&result, "kept-from-first-boot");
    assert_no_marker(&result, "formatted /dev/");
    assert_test_passed(&result);
    assert_ne!(sha256(&upper), before, "boot 2 did not use the upper");
}

/// Erased flash reads all 0xFF: blank too.
#[test]
fn erased_upper_is_formatted_and_persists() {
    let scratch = Scratch::new("firstboot-erased");
    let upper = scratch.join("upper.img");
    filled_file(&upper, 0xff, 64 * MIB);
    assert_formatted_and_written(&upper);
}

/// A disk that is not blank is never written, even with a mkfs at hand.
#[track_caller]
fn assert_not_formatted(upper: &Path, reason: &str) {
    let before = sha256(upper);
    let result = boot_upper(
        upper,
        Initrd::Path(initramfs_with_mkfs().clone()),
        "/dev/vdb",
        "grep -q '^tmpfs /overlay tmpfs' /proc/mounts && echo x > /x && overlay-init status",
    );
    assert_marker(
        &result,
        "WARNING: persistent upper not used, booting on a tmpfs upper",
    );
    assert_marker(&result, reason);
    assert_no_marker(&result, "formatted /dev/");
    assert_test_passed(&result);
    assert_eq!(
        sha256(upper),
        before,
        "a non-blank upper was written\n{result:?}"
    );
}

#[test]
fn random_upper_is_not_formatted() {
    let scratch = Scratch::new("firstboot-random");
    let upper = scratch.join("upper.img");
    run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", upper.display()))
        .args(["bs=1M", "count=64", "status=none"]));
    assert_not_formatted(&upper, "reason: probe upper /dev/vdb");
}

#[test]
fn vfat_upper_is_not_formatted() {
    let scratch = Scratch::new("firstboot-vfat");
    let upper = scratch.join("upper.img");
    filled_file(&upper, 0, 64 * MIB);
    run(Command::new("mkfs.vfat").arg("-n").arg("DATA").arg(&upper));
    assert_not_formatted(&upper, "reason: probe upper /dev/vdb");
}

/// `ovl.format=never`: a zeroed disk is not formatted, even with a mkfs in the initramfs; the
/// boot goes on on a tmpfs upper with a box that says why, and the disk is unchanged.
#[test]
fn zeroed_upper_with_format_never_is_left_alone() {
    let scratch = Scratch::new("firstboot-never");
    let upper = scratch.join("upper.img");
    filled_file(&upper, 0, 64 * MIB);
    let before = sha256(&upper);
    let result = boot_upper(
        &upper,
        Initrd::Path(initramfs_with_mkfs().clone()),
        "/dev/vdb ovl.format=never",
        "grep -q '^tmpfs /overlay tmpfs' /proc/mounts && echo x > /x && sync && overlay-init status",
    );
    assert_marker(
        &result,
        "WARNING: persistent upper not used, booting on a tmpfs upper",
    );
    assert_marker(
        &result,
        "reason: /dev/vdb was not formatted: it is blank (zeroed) and ovl.format=never",
    );
    assert_no_marker(&result, "formatting /dev/");
    assert_no_marker(&result, "formatted /dev/");
    assert_test_passed(&result);
    assert_eq!(
        sha256(&upper),
        before,
        "ovl.format=never wrote to the disk\n{result:?}"
    );
}

/// A random delay below `max` (RandomState is seeded from the OS).
fn random_delay(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    Duration::from_millis(hasher.finish() % max.as_millis() as u64)
}

/// Power cut during the first-boot format: QEMU is killed (SIGKILL) at a random instant after the init
/// announces the format (`OVL_FIRSTBOOT_TRIALS`, default 2; 10 for the bench). The next
/// boot (the same initramfs) always ends on a persistent ext4 upper whose `upper/` is empty:
/// the device was blank (formatted now), marked as ours (formatted again) or complete.
#[test]
fn power_cut_during_the_format_never_leaves_an_unusable_upper() {
    let trials: usize = std::env::var("OVL_FIRSTBOOT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut cut_during_format = 0;
    for trial in 0..trials {
        let scratch = Scratch::new(&format!("firstboot-cut-{trial}"));
        let upper = scratch.join("upper.img");
        filled_file(&upper, 0, 64 * MIB);
        let delay = random_delay(Duration::from_millis(1500));
        let cut = boot(&BootSpec {
            disks: vec![Disk::ro(&artifacts().root_sqsh), Disk::rw(&upper)],
            append: format!(
                "root=/dev/vda ovl.upper=/dev/vdb {}",
                test_init_args("true")
            ),
            timeout: TIMEOUT,
            initrd: Initrd::Path(initramfs_with_mkfs().clone()),
            triggers: vec![Trigger {
                after: "formatting /dev/vdb (ext4, label overlay, 64 MiB) with".into(),
                action: Action::Kill(delay),
            }],
            ..Default::default()
        });
        assert_marker(&cut, "formatting /dev/vdb");
        assert_ne!(cut.exit, Exit::Panic, "the kernel panicked\n{cut:?}");
        let finished = cut.contains("formatted /dev/vdb");
        if !finished {
            cut_during_format += 1;
        }
        let next = boot_upper(
            &upper,
            Initrd::Path(initramfs_with_mkfs().clone()),
            "/dev/vdb",
            "grep -q '^/dev/vdb /overlay ext4 rw' /proc/mounts && \
             ls -A /overlay/upper | wc -l | grep -qx 0 && echo upper-empty",
        );
        eprintln!(
            "trial {trial}: killed {} ms after the announcement, format {}; next boot {}",
            delay.as_millis(),
            if finished {
                "had finished"
            } else {
                "cut short"
            },
            if next.contains("formatted /dev/vdb") {
                "formatted again"
            } else {
                "used the filesystem"
            }
        );
        assert_no_marker(&next, "persistent upper not used");
        assert_output(&next, "upper-empty");
        assert_test_passed(&next);
    }
    eprintln!("{cut_during_format} of {trials} cuts landed before the format finished");
}

/// The tmpfs upper is capped (half of RAM by default): in the 256 MiB guest, writing 1 GiB
/// ends in ENOSPC for the writer, and the OOM killer never runs. (The tmpfs fallback of an
/// unusable device is mounted by the same function, with the same cap.)
#[test]
fn tmpfs_upper_is_capped_writing_1_gib_gets_enospc_without_oom() {
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh)],
        append: format!(
            "root=/dev/vda {}",
            test_init_args(
                "grep ' /overlay ' /proc/mounts; \
                 e=$(dd if=/dev/zero of=/big bs=1M count=1024 2>&1); echo DD: $e; \
                 ls -l /big; rm /big; echo KERNEL-SAYS:; dmesg | grep -i -e oom -e 'out of memory'; true"
            )
        ),
        timeout: TIMEOUT,
        ..Default::default()
    });
    assert_ne!(result.exit, Exit::Panic, "the kernel panicked\n{result:?}");
    assert_no_marker(&result, "Out of memory");
    assert_output(&result, "tmpfs /overlay tmpfs rw");
    assert_output(&result, ",size=");
    assert_output(&result, "No space left on device");
    assert_output(&result, "KERNEL-SAYS:");
    let kernel_says = result.output().split("KERNEL-SAYS:").nth(1).unwrap_or("");
    assert!(
        !kernel_says.to_lowercase().contains("out of memory") && !kernel_says.contains("oom"),
        "the OOM killer ran\n{result:?}"
    );
    assert_test_passed(&result);
}
