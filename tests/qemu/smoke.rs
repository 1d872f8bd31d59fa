//! The QEMU harness itself: a busybox initramfs (not overlay-init) boots, prints a marker and
//! powers off; a guest that hangs is stopped by the timeout. Run: `cargo test --test qemu smoke::`.

use crate::support::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn busybox_initramfs_prints_marker_and_powers_off() {
    let scratch = Scratch::new("smoke-marker");
    let initramfs = scratch.join("initramfs.cpio");
    BusyboxInitramfs {
        // The kernel passes what follows "--" to init as arguments.
        init_script: "busybox mount -t proc proc /proc\n\
                      echo \"SMOKE: pid=$$ args=$* uptime=$(busybox cut -d' ' -f1 /proc/uptime)\"\n\
                      busybox poweroff -f\n"
            .into(),
        ..Default::default()
    }
    .build(&initramfs);

    let result = boot(&BootSpec {
        initrd: Initrd::Path(initramfs),
        append: "-- first \"second word\"".into(),
        timeout: Duration::from_secs(60),
        ..Default::default()
    });

    assert_marker(&result, "SMOKE: pid=1 args=first second word uptime=");
    assert_exit(&result, Exit::PowerOff);
    eprintln!(
        "boot to /init and power off: {:.2?} wall; /init at uptime {}",
        result.elapsed,
        result.values("uptime=").first().unwrap_or(&"?")
    );
}

/// Boots a busybox initramfs whose /init is `script`, bounded by `timeout`.
fn boot_script(name: &str, script: &str, timeout: Duration) -> BootResult {
    let scratch = Scratch::new(name);
    let initramfs = scratch.join("initramfs.cpio");
    BusyboxInitramfs {
        init_script: script.into(),
        ..Default::default()
    }
    .build(&initramfs);
    boot(&BootSpec {
        initrd: Initrd::Path(initramfs),
        timeout,
        ..Default::default()
    })
}

#[test]
fn hanging_guest_is_stopped_by_the_timeout() {
    let result = boot_script(
        "smoke-hang",
        "echo SMOKE: hanging\nwhile :; do busybox sleep 1; done\n",
        Duration::from_secs(8),
    );

    assert_marker(&result, "SMOKE: hanging");
    assert_exit(&result, Exit::Timeout);
    // qemu/run kills QEMU at the timeout (8 s, scaled), not at the harness's later safety
    // margin.
    let bound = Duration::from_secs(8).mul_f64(timeout_scale()) + Duration::from_secs(7);
    assert!(
        result.elapsed < bound,
        "took {:.1?}\n{result:?}",
        result.elapsed
    );
}

#[test]
fn init_that_exits_is_reported_as_a_kernel_panic() {
    let result = boot_script(
        "smoke-panic",
        "echo SMOKE: exiting\nexit 7\n",
        Duration::from_secs(60),
    );

    assert_marker(&result, "Attempted to kill init");
    assert_exit(&result, Exit::Panic);
}

/// The busybox stand-in for overlay-init (`BUSYBOX_OVERLAY_INIT`) with the virtio block stack,
/// squashfs and overlay, in `scratch`.
fn busybox_overlay_initramfs(scratch: &Scratch) -> PathBuf {
    let initramfs = scratch.join("initramfs.cpio");
    let mut modules: Vec<String> = VIRTIO_BLK_MODULES
        .iter()
        .map(|name| name.to_string())
        .collect();
    modules.extend(["squashfs".into(), "overlay".into()]);
    BusyboxInitramfs {
        init_script: BUSYBOX_OVERLAY_INIT.into(),
        modules,
        ..Default::default()
    }
    .build(&initramfs);
    initramfs
}

/// The demo root and its /sbin/test-init, booted through a busybox stand-in for overlay-init:
/// arguments after "--" reach the test command, markers are printed, the write lands on the
/// upper disk, and the harness reads it back out of the ext4 image.
#[test]
fn demo_root_runs_test_init_through_a_busybox_overlay() {
    let demo = demo();
    let scratch = Scratch::new("smoke-demo");
    let upper = fresh_copy(&demo.upper_ext4, &scratch, "upper.ext4");
    let initramfs = busybox_overlay_initramfs(&scratch);

    let script = "echo persisted > /data; grep -q '^overlay / overlay' /proc/mounts && \
                  grep -q ' /rom squashfs ' /proc/mounts && cat /etc/demo-release";
    let result = boot(&BootSpec {
        initrd: Initrd::Path(initramfs),
        disks: vec![Disk::ro(&demo.root_sqsh), Disk::rw(&upper)],
        append: test_init_args(script),
        ..Default::default()
    });

    assert_marker(&result, &format!("OVLTEST: pid=1 args={script}"));
    assert_marker(&result, "overlay-init demo root");
    assert_test_passed(&result);
    assert_eq!(
        ext4_read_file(&upper, "/upper/data").as_deref(),
        Some(&b"persisted\n"[..]),
        "{result:?}"
    );
    assert_eq!(
        ext4_list_dir(&upper, "/upper"),
        Some(vec!["data".to_string()])
    );
    assert_eq!(
        read_mounted(&upper, "ext4", "/upper/data").as_deref(),
        Some(&b"persisted\n"[..])
    );
    // The lower is untouched.
    assert_eq!(read_mounted(&demo.root_sqsh, "squashfs", "/data"), None);
}

/// The demo as a person uses it (busybox init, askfirst shell, motd): a file written before
/// `reboot` is there after it. Booted through the busybox stand-in, so it tests the demo root
/// and the console input of the harness, not overlay-init.
#[test]
fn demo_root_keeps_a_file_across_reboot_typed_on_the_console() {
    let demo = demo();
    let scratch = Scratch::new("smoke-demo-session");
    let upper = fresh_copy(&demo.upper_ext4, &scratch, "upper.ext4");
    let initramfs = busybox_overlay_initramfs(&scratch);
    let session = |typed: &str| BootSpec {
        initrd: Initrd::Path(initramfs.clone()),
        disks: vec![Disk::ro(&demo.root_sqsh), Disk::rw(&upper)],
        // The kernel puts unknown NAME=VALUE parameters into init's environment.
        append: "INIT=/sbin/init".into(),
        triggers: vec![
            Trigger {
                after: "Please press Enter".into(),
                action: Action::Console(b"\n".to_vec()),
            },
            Trigger {
                after: "demo:/# ".into(),
                action: Action::Console(typed.as_bytes().to_vec()),
            },
        ],
        ..Default::default()
    };

    let first = boot(&session("echo kept-after-reboot > /hello; reboot\n"));
    assert_marker(&first, "demo: the overlay root is up");
    assert_marker(&first, "Try it:"); // the motd
    assert_exit(&first, Exit::Reboot);

    let second = boot(&session("cat /hello; poweroff\n"));
    assert_marker(&second, "\nkept-after-reboot");
    assert_exit(&second, Exit::PowerOff);
}

/// A disk attached through the QEMU monitor while the guest runs shows up in the guest
/// (what the late-device tests build on).
#[test]
fn disk_hotplugged_through_the_monitor_appears_in_the_guest() {
    let scratch = Scratch::new("smoke-hotplug");
    let disk = scratch.join("late.img");
    make_ext4(&disk, 8, None, &["-L", "late"]);
    let initramfs = scratch.join("initramfs.cpio");
    BusyboxInitramfs {
        init_script: format!(
            "busybox mount -t devtmpfs devtmpfs /dev\n{INSMOD_ALL}echo SMOKE: waiting for vda\n\
             until [ -b /dev/vda ]; do busybox sleep 0.1; done\n\
             echo SMOKE: got label=$(busybox dd if=/dev/vda bs=1 skip=1144 count=4 2>/dev/null)\nbusybox poweroff -f\n"
        ),
        modules: VIRTIO_BLK_MODULES
            .iter()
            .map(|name| name.to_string())
            .collect(),
        ..Default::default()
    }
    .build(&initramfs);
    let monitor = scratch.join("monitor.sock");
    let attach = |command: String| Trigger {
        after: "SMOKE: waiting for vda".into(),
        action: Action::Monitor(command),
    };

    let result = boot(&BootSpec {
        initrd: Initrd::Path(initramfs),
        monitor: Some(monitor),
        triggers: vec![
            attach(format!(
                "drive_add 0 if=none,id=late,format=raw,file={}",
                disk.display()
            )),
            attach("device_add virtio-blk-pci,drive=late,id=late-disk".into()),
        ],
        timeout: Duration::from_secs(60),
        ..Default::default()
    });

    assert_eq!(
        result.monitor_replies.first().map(|reply| reply.trim()),
        Some("OK"),
        "{result:?}"
    );
    // The ext4 label sits 120 bytes into the superblock, at 1024.
    assert_marker(&result, "SMOKE: got label=late");
    assert_exit(&result, Exit::PowerOff);
}

/// Every way `qemu/run` can end has its own line in the scripts that boot a guest (the demo
/// once ended silently on status 2: QEMU quit without a power-down or reboot line).
#[test]
fn every_qemu_run_status_is_described() {
    let mut lines = Vec::new();
    for status in ["0", "1", "2", "3", "124", "9"] {
        let output = std::process::Command::new("bash")
            .arg("-c")
            .arg("source qemu/lib.sh && describe_guest_end \"$1\"")
            .arg("describe")
            .arg(status)
            .current_dir(repo_dir())
            .output()
            .expect("run bash");
        assert!(output.status.success(), "status {status}: {output:?}");
        let line = String::from_utf8(output.stdout).unwrap();
        assert!(!line.trim().is_empty(), "status {status} has no line");
        lines.push(line);
    }
    let mut distinct = lines.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), lines.len(), "{lines:?}");
    let demo = std::fs::read_to_string(repo_dir().join("qemu/demo")).unwrap();
    assert!(
        demo.contains("describe_guest_end \"$status\""),
        "qemu/demo must say how it ended"
    );
}
