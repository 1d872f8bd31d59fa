//! Boots that go wrong, in QEMU: a bad lower, every kind of bad upper, a missing init, a bad
//! command line, failsafe (by parameter, by key, by boot counter) and `ovl.onfail=`. Each boot has
//! a hard timeout; none may panic the kernel; a persistent upper that is not used must keep its
//! exact bytes (compared by hash before and after).
//!
//! Run: `cargo test --test qemu failures::` (about 20 boots, a few minutes on 2 cores).

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn random_file(path: &Path, mib: u64) {
    run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", path.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("status=none"));
}

fn zero_file(path: &Path, mib: u64) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
}

/// Boot the squashfs demo root with `upper` as vdb; `script` runs as the real init's job.
fn boot_with_upper(upper: Disk, params: &str, script: &str) -> BootResult {
    boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh), upper],
        append: format!(
            "root=/dev/vda ovl.upper=/dev/vdb {params} {}",
            test_init_args(script)
        ),
        timeout: TIMEOUT,
        ..Default::default()
    })
}

#[track_caller]
fn assert_no_panic(result: &BootResult) {
    assert_ne!(result.exit, Exit::Panic, "the kernel panicked\n{result:?}");
    assert_no_marker(result, "Kernel panic");
}

/// What every "bad upper" boot must show: the warning box naming the device and a reason,
/// a tmpfs at /overlay, the test command passing, and the device's bytes untouched.
#[track_caller]
fn assert_tmpfs_fallback(upper: &Path, readonly: bool, reason: &str) {
    let before = sha256(upper);
    let disk = if readonly {
        Disk::ro(upper)
    } else {
        Disk::rw(upper)
    };
    let script = "grep -q '^tmpfs /overlay tmpfs' /proc/mounts && echo written > /x && \
                  cat /x && overlay-init status";
    let result = boot_with_upper(disk, "", script);
    assert_no_panic(&result);
    assert_marker(
        &result,
        "WARNING: persistent upper not used, booting on a tmpfs upper",
    );
    assert_marker(&result, "* device: /dev/vdb");
    assert_marker(&result, reason);
    assert_marker(&result, "tmpfs fallback: ");
    assert_marker(&result, "mode: normal");
    assert_test_passed(&result);
    assert_eq!(
        sha256(upper),
        before,
        "the unused upper was modified\n{result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A bad lower: the failure path, each ovl.onfail action

#[test]
fn lower_of_random_bytes_fails_the_boot_and_halts() {
    let scratch = Scratch::new("fail-lower-random");
    let lower = scratch.join("lower.img");
    random_file(&lower, 4);
    let upper = fresh_copy(&artifacts().upper_ext4, &scratch, "upper.ext4");
    let (lower_before, upper_before) = (sha256(&lower), sha256(&upper));
    let result = boot(&BootSpec {
        disks: vec![Disk::rw(&lower), Disk::rw(&upper)],
        append: format!(
            "root=/dev/vda ovl.upper=/dev/vdb ovl.onfail=halt {}",
            test_init_args("true")
        ),
        timeout: TIMEOUT,
        ..Default::default()
    });
    assert_no_panic(&result);
    assert_marker(&result, "overlay-init: BOOT FAILED");
    assert_marker(&result, "* step: lower");
    assert_marker(&result, "holds no filesystem overlay-init recognises");
    assert_marker(&result, "halting (ovl.onfail=halt)");
    assert_no_marker(&result, "OVLTEST: pid=");
    assert_exit(&result, Exit::PowerOff);
    assert_eq!(sha256(&lower), lower_before);
    assert_eq!(sha256(&upper), upper_before);
}

#[test]
fn truncated_squashfs_fails_the_boot_and_reboots_after_a_countdown() {
    let scratch = Scratch::new("fail-lower-truncated");
    let lower = fresh_copy(&artifacts().root_sqsh, &scratch, "root.sqsh");
    let size = std::fs::metadata(&lower).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&lower)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&lower)],
        append: format!("root=/dev/vda ovl.onfail=reboot {}", test_init_args("true")),
        timeout: TIMEOUT,
        ..Default::default()
    });
    assert_no_panic(&result);
    assert_marker(&result, "overlay-init: BOOT FAILED");
    assert_marker(&result, "* step: lower");
    assert_marker(&result, "rebooting in 10 s");
    assert_marker(&result, "rebooting in 1 s");
    assert_no_marker(&result, "OVLTEST: pid=");
    assert_exit(&result, Exit::Reboot);
}

/// overlay-init's initramfs plus busybox as /bin/sh (a rescue shell) and /bin/busybox.
fn initramfs_with_shell() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let artifacts = artifacts();
        let out = work_dir().join("initramfs-shell.cpio.gz");
        let busybox = busybox();
        run(Command::new(repo_dir().join("initramfs/build"))
            .arg("--init")
            .arg(&artifacts.init)
            .arg("--modules")
            .arg(&artifacts.kernel.modules)
            .arg("--file")
            .arg(format!("{}:/bin/sh", busybox.display()))
            .arg("--file")
            .arg(format!("{}:/bin/busybox", busybox.display()))
            .arg("-o")
            .arg(&out));
        out
    })
}

/// `init=` names a file the root does not have: the failure path, with the initramfs still
/// there (the default action with a shell present is the rescue shell, which runs and finds
/// the initramfs's files).
#[test]
fn missing_init_keeps_the_initramfs_and_starts_the_rescue_shell() {
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh)],
        initrd: Initrd::Path(initramfs_with_shell().clone()),
        append: "root=/dev/vda init=/sbin/no-such-init".into(),
        timeout: TIMEOUT,
        triggers: vec![Trigger {
            after: "starting a rescue shell".into(),
            action: Action::Console(
                b"test -f /lib/modules/overlay-init.index && test -x /init && \
                  echo RESCUE-$((6*7)); /bin/busybox poweroff -f\n"
                    .to_vec(),
            ),
        }],
        ..Default::default()
    });
    assert_no_panic(&result);
    assert_marker(&result, "overlay-init: BOOT FAILED");
    assert_marker(&result, "* step: check init");
    assert_marker(&result, "/sbin/no-such-init");
    assert_marker(&result, "RESCUE-42");
    assert_no_marker(&result, "initramfs freed");
    assert_exit(&result, Exit::PowerOff);
}

// ---------------------------------------------------------------------------------------------
// Bad uppers: tmpfs, a warning box, the device untouched

/// A blank upper is formatted on first boot, but this initramfs carries no mkfs and the demo
/// lower has only busybox's `mke2fs` applet (ext2 only, not a usable mkfs): a clear reason,
/// a tmpfs upper, and the device not written (not even the format marker).
#[test]
fn upper_of_zeros_without_a_mkfs_falls_back_to_tmpfs() {
    let scratch = Scratch::new("fail-upper-zeros");
    let upper = scratch.join("upper.img");
    zero_file(&upper, 16);
    assert_tmpfs_fallback(
        &upper,
        false,
        "no mkfs for ext4 in the initramfs nor in the lower",
    );
}

#[test]
fn upper_of_random_bytes_falls_back_to_tmpfs() {
    let scratch = Scratch::new("fail-upper-random");
    let upper = scratch.join("upper.img");
    random_file(&upper, 16);
    assert_tmpfs_fallback(&upper, false, "reason: probe upper /dev/vdb");
}

#[test]
fn upper_of_the_wrong_filesystem_falls_back_to_tmpfs() {
    let scratch = Scratch::new("fail-upper-squashfs");
    let upper = fresh_copy(&artifacts().root_sqsh, &scratch, "upper.sqsh");
    assert_tmpfs_fallback(&upper, false, "cannot hold an upper");
}

#[test]
fn read_only_upper_falls_back_to_tmpfs() {
    let scratch = Scratch::new("fail-upper-ro");
    let upper = fresh_copy(&artifacts().upper_ext4, &scratch, "upper.ext4");
    assert_tmpfs_fallback(&upper, true, "read-write");
}

/// A full upper is no reason to boot in factory state (issue 11, item 8): PID 1 and the system
/// run as root, so an upper filled into root's reserve, or to the brim, is still used, with a
/// warning; only an overlay that will not mount falls back. The system can then free space.
#[test]
fn full_upper_is_still_used_with_a_warning() {
    let scratch = Scratch::new("fail-upper-full");
    let upper = fresh_copy(&artifacts().upper_ext4, &scratch, "upper.ext4");
    // Fill it to the brim as root (reserved blocks too), in a private mount namespace; the
    // loop device is autocleared when the mount goes, with the namespace if the script fails.
    let fill = format!(
        "set -e; d=$(mktemp -d); mount -o loop {img} $d; mkdir -p $d/upper $d/work; \
         echo kept > $d/upper/kept; dd if=/dev/zero of=$d/upper/fill bs=64k status=none || true; \
         df -k $d; umount $d; rmdir $d",
        img = upper.display()
    );
    let df = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(&fill));
    eprintln!("{df}");
    let script = "grep -q '^/dev/vdb /overlay ext4 rw' /proc/mounts && cat /kept && rm /fill && \
                  echo written > /x && cat /x";
    let result = boot_with_upper(Disk::rw(&upper), "", script);
    assert_no_panic(&result);
    assert_marker(&result, "used anyway");
    assert_no_marker(
        &result,
        "WARNING: persistent upper not used, booting on a tmpfs upper",
    );
    assert_output(&result, "kept");
    assert_output(&result, "written");
    assert_test_passed(&result);
    assert_eq!(
        ext4_read_file(&upper, "/upper/fill"),
        None,
        "the space was freed"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad command lines

#[test]
fn every_kind_of_bad_value_is_reported_and_the_boot_goes_on_with_defaults() {
    let bad = "ovl.size=lots ovl.timeout=-1 ovl.onfail=explode ovl.bogus=1 rootfstype=xfs \
               ovl.maxtries=x ovl.upper=sda rootdelay=soon ovl.failsafe_wait=1.5 ovl.reset=maybe \
               ovl.upperfstype=squashfs";
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh)],
        append: format!(
            "root=/dev/vda {bad} {}",
            test_init_args("grep -q '^tmpfs /overlay tmpfs' /proc/mounts")
        ),
        timeout: TIMEOUT,
        ..Default::default()
    });
    assert_no_panic(&result);
    for param in [
        "ovl.size: ",
        "ovl.timeout: ",
        "ovl.onfail: ",
        "ovl.bogus: ",
        "rootfstype: ",
        "ovl.maxtries: ",
        "ovl.upper: ",
        "rootdelay: ",
        "ovl.failsafe_wait: ",
        "ovl.reset: ",
        "ovl.upperfstype: ",
    ] {
        let lines: Vec<&str> = result
            .console
            .lines()
            .filter(|l| l.contains("overlay-init") && l.contains(param))
            .collect();
        assert_eq!(lines.len(), 1, "one message for {param}\n{result:?}");
    }
    assert_marker(&result, "accepted: shell, reboot, halt");
    assert_marker(&result, "Accepted: ovl.upper");
    assert_test_passed(&result);
}

#[test]
fn unsafe_bad_values_take_the_failure_path_naming_each() {
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh)],
        append: "root=/dev/vda init=sbin/init ovl.lower=bogus ovl.image=relative.sqsh \
                 ovl.onfail=halt"
            .into(),
        timeout: TIMEOUT,
        ..Default::default()
    });
    assert_no_panic(&result);
    assert_marker(&result, "overlay-init: BOOT FAILED");
    assert_marker(&result, "* step: command line");
    for param in ["init: needs an absolute path", "ovl.lower: ", "ovl.image: "] {
        assert_marker(&result, param);
    }
    assert_marker(&result, "halting (ovl.onfail=halt)");
    assert_exit(&result, Exit::PowerOff);
}

// ---------------------------------------------------------------------------------------------
// Failsafe

/// A 64 MiB ext4 upper whose upper layer already holds `/saved` (and the empty work dir).
fn upper_with_saved_file(scratch: &Scratch) -> PathBuf {
    let tree = scratch.join("upper-tree");
    write_file(&tree.join("upper/saved"), "from an earlier boot\n", 0o644);
    std::fs::create_dir_all(tree.join("work")).unwrap();
    let upper = scratch.join("upper.ext4");
    make_ext4(&upper, 64, Some(&tree), &["-L", "overlay"]);
    upper
}

/// In failsafe the root is the factory state (the upper's `/saved` is not in it) made
/// writable by a tmpfs, the persistent upper is read-only at /overlay (its files readable), and
/// status says failsafe and why.
const FAILSAFE_SCRIPT: &str = "grep -q '^/dev/vdb /overlay ext4 ro' /proc/mounts && \
     grep -q 'upperdir=/run/overlay-init/failsafe-upper/upper' /proc/mounts && \
     ! test -e /saved && cat /overlay/upper/saved && echo new > /new && \
     ! touch /overlay/nope 2>/dev/null && overlay-init status";

#[test]
fn failsafe_by_parameter() {
    let scratch = Scratch::new("failsafe-param");
    let upper = upper_with_saved_file(&scratch);
    let before = sha256(&upper);
    let result = boot_with_upper(Disk::rw(&upper), "ovl.failsafe", FAILSAFE_SCRIPT);
    assert_no_panic(&result);
    assert_marker(&result, "WARNING: FAILSAFE boot");
    assert_marker(
        &result,
        "mode: failsafe (ovl.failsafe on the kernel command line)",
    );
    assert_marker(&result, "from an earlier boot");
    assert_test_passed(&result);
    assert_eq!(sha256(&upper), before, "failsafe wrote to the upper");
}

#[test]
fn failsafe_by_key_on_the_serial_console() {
    let scratch = Scratch::new("failsafe-key");
    let upper = upper_with_saved_file(&scratch);
    let before = sha256(&upper);
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh), Disk::rw(&upper)],
        append: format!(
            "root=/dev/vda ovl.upper=/dev/vdb ovl.failsafe_wait=30 {}",
            test_init_args(FAILSAFE_SCRIPT)
        ),
        timeout: TIMEOUT,
        // Type once the whole prompt is out, so the echo does not split it.
        triggers: vec![Trigger {
            after: "press f and Enter for failsafe (30 s)".into(),
            action: Action::Console(b"f\n".to_vec()),
        }],
        ..Default::default()
    });
    assert_no_panic(&result);
    assert_marker(&result, "press f and Enter for failsafe (30 s)");
    assert_marker(&result, "failsafe key pressed");
    assert_marker(
        &result,
        "mode: failsafe (failsafe key pressed on the console)",
    );
    assert_test_passed(&result);
    // The key ended the window early: far less than the 30 s it offered (guest time, from
    // the init's start to the key, so a slow host does not count).
    let started = result
        .kernel_time_of("overlay-init: starting")
        .expect("start stamp");
    let pressed = result
        .kernel_time_of("failsafe key pressed")
        .expect("key stamp");
    assert!(
        pressed - started < 25.0,
        "{started} -> {pressed}\n{result:?}"
    );
    assert_eq!(sha256(&upper), before, "failsafe wrote to the upper");
}

/// Three boots without mark-good count 1, 2, 3 on the upper; the fourth is failsafe (and
/// says why, and writes nothing); mark-good from the running system clears the counter.
#[test]
fn three_boots_without_mark_good_then_failsafe() {
    let scratch = Scratch::new("failsafe-bootloop");
    let upper = upper_with_saved_file(&scratch);
    for attempt in 1..=3 {
        // The first boot also opens a key window that passes without a key: a normal boot.
        let params = if attempt == 1 {
            "ovl.failsafe_wait=1"
        } else {
            ""
        };
        let result = boot_with_upper(Disk::rw(&upper), params, "overlay-init status");
        assert_no_panic(&result);
        assert_marker(&result, "mode: normal");
        assert_marker(
            &result,
            &format!("boot attempts since mark-good: {attempt} of 3"),
        );
        assert_no_marker(&result, "FAILSAFE");
        assert_test_passed(&result);
        assert_eq!(
            ext4_read_file(&upper, "/.overlay-init/bootcount"),
            Some(format!("attempts={attempt}\n").into_bytes()),
            "after boot {attempt}"
        );
    }

    // The normal boots powered off without unmounting: the first read-only mount replays the
    // ext4 journal (the kernel's own recovery, which makes the last boot's files readable at
    // /overlay). So the first failsafe boot is checked by content, the second by bytes.
    for failsafe_boot in 1..=2 {
        let before = sha256(&upper);
        let result = boot_with_upper(Disk::rw(&upper), "", FAILSAFE_SCRIPT);
        assert_no_panic(&result);
        assert_marker(&result, "WARNING: FAILSAFE boot");
        assert_marker(
            &result,
            "mode: failsafe (3 boots without `overlay-init mark-good` (ovl.maxtries=3))",
        );
        assert_marker(&result, "overlay-init mark-good");
        assert_test_passed(&result);
        assert_eq!(
            ext4_read_file(&upper, "/.overlay-init/bootcount"),
            Some(b"attempts=3\n".to_vec()),
            "a failsafe boot does not count"
        );
        assert_eq!(ext4_read_file(&upper, "/upper/new"), None);
        if failsafe_boot == 2 {
            assert_eq!(
                sha256(&upper),
                before,
                "the failsafe boot wrote to the upper"
            );
        }
    }

    // Out of failsafe: the operator makes /overlay writable and marks the boot good; status
    // then shows the counter as it is now, not as the boot recorded it.
    let result = boot_with_upper(
        Disk::rw(&upper),
        "",
        "mount -o remount,rw /overlay && overlay-init mark-good && overlay-init status",
    );
    assert_no_panic(&result);
    assert_marker(&result, "boot-attempt counter cleared (was 3)");
    assert_marker(&result, "boot attempts since mark-good: 0 of 3");
    assert_test_passed(&result);
    assert_eq!(ext4_read_file(&upper, "/.overlay-init/bootcount"), None);
}

/// A Rust panic in PID 1 (the release binary has `panic = "abort"`) reaches the one failure
/// handler through the panic hook: named, boxed, then `ovl.onfail=halt` powers off. Without
/// the hook the kernel would panic ("Attempted to kill init").
#[test]
fn a_panic_in_pid1_reaches_the_failure_handler() {
    let result = boot(&BootSpec {
        disks: vec![Disk::ro(&artifacts().root_sqsh)],
        append: "root=/dev/vda ovl.onfail=halt OVL_TEST_PANIC=1".into(),
        timeout: TIMEOUT,
        ..Default::default()
    });
    assert_no_panic(&result);
    assert_marker(&result, "overlay-init: BOOT FAILED");
    assert_marker(&result, "* step: panic");
    assert_marker(&result, "a deliberate panic to test the failure path");
    assert_marker(&result, "halting (ovl.onfail=halt)");
    assert_exit(&result, Exit::PowerOff);
}
