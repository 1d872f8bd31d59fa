//! The QEMU harness itself: a busybox initramfs (not overlay-init) boots, prints a marker and
//! powers off; a guest that hangs is stopped by the timeout. Run: `cargo test --test qemu_smoke`.

mod common;

use common::*;
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

#[test]
fn hanging_guest_is_stopped_by_the_timeout() {
    let scratch = Scratch::new("smoke-hang");
    let initramfs = scratch.join("initramfs.cpio");
    BusyboxInitramfs {
        init_script: "echo SMOKE: hanging\nwhile :; do busybox sleep 1; done\n".into(),
        ..Default::default()
    }
    .build(&initramfs);

    let result = boot(&BootSpec {
        initrd: Initrd::Path(initramfs),
        timeout: Duration::from_secs(8),
        ..Default::default()
    });

    assert_marker(&result, "SMOKE: hanging");
    assert_exit(&result, Exit::Timeout);
    // qemu/run kills QEMU at the timeout, not at the harness's later safety margin.
    assert!(
        result.elapsed < Duration::from_secs(15),
        "took {:.1?}\n{result:?}",
        result.elapsed
    );
}

#[test]
fn init_that_exits_is_reported_as_a_kernel_panic() {
    let scratch = Scratch::new("smoke-panic");
    let initramfs = scratch.join("initramfs.cpio");
    BusyboxInitramfs {
        init_script: "echo SMOKE: exiting\nexit 7\n".into(),
        ..Default::default()
    }
    .build(&initramfs);

    let result = boot(&BootSpec {
        initrd: Initrd::Path(initramfs),
        timeout: Duration::from_secs(60),
        ..Default::default()
    });

    assert_marker(&result, "Attempted to kill init");
    assert_exit(&result, Exit::Panic);
}
