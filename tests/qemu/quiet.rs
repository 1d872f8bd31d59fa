//! `quiet` on the kernel command line (README, "What it does"): every line overlay-init logs
//! is in the kernel log, but only warnings and errors reach the console; informational lines
//! (the start, the layers, the handover summary) cost no serial output.
//!
//! Run: `cargo test --test qemu quiet::` (as root).

use crate::support::*;

#[test]
fn with_quiet_only_warnings_reach_the_console_and_every_line_the_kernel_log() {
    let a = artifacts();
    // An unknown ovl.* parameter: a warning, and the boot goes on.
    let result = boot(&BootSpec {
        append: format!(
            "root=/dev/vda ovl.nosuchknob=1 {}",
            // (The bracket keeps the pattern from matching the logged command line.)
            test_init_args("dmesg | grep overlay-ini[t]: | sed 's/^/KLOG /'")
        ),
        disks: vec![Disk::ro(&a.root_sqsh)],
        quiet: true,
        ..Default::default()
    });
    assert_test_passed(&result);
    // The kernel log has the informational lines and the warning.
    let klog = result.output_values("KLOG ").join("\n");
    for line in [
        "overlay-init: starting",
        "overlay-init: handover to",
        "unknown parameter",
    ] {
        assert!(
            klog.contains(line),
            "{line:?} not in the kernel log:\n{klog}"
        );
    }
    // The console: the warning (which the kernel hides with quiet) written by overlay-init,
    // and none of its informational lines.
    let console: Vec<&str> = result.console.lines().map(|l| l.trim_end()).collect();
    assert!(
        console
            .iter()
            .any(|l| l.starts_with("overlay-init: warning: ") && l.contains("ovl.nosuchknob")),
        "the warning did not reach the console\n{result:?}"
    );
    for info in [
        "overlay-init: starting",
        "overlay-init: lower: ",
        "overlay-init: handover to",
    ] {
        assert!(
            !console.iter().any(|l| l.starts_with(info)),
            "{info:?} reached the console despite quiet\n{result:?}"
        );
    }
}
