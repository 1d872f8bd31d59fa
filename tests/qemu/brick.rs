//! Never brick (issue 11), where only a boot can show it: an upper that breaks
//! a step after it is mounted still counts towards `ovl.maxtries`, so the
//! boot loop ends in the failsafe boot instead of going on forever.
//!
//! Run: `OVL_QEMU_JOBS=1 cargo test --test qemu brick::` (3 boots).

use crate::support::*;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// An upper holding a zero-length `/sbin/test-init` (what a power cut can
/// leave of a replaced init) fails "check init" on every boot. It used to fail
/// before the boot was counted, so `ovl.maxtries` never tripped; now boots 1
/// and 2 count 1 and 2 and fail, and boot 3 is the failsafe boot: the lower's
/// init runs.
#[test]
fn a_broken_init_on_the_upper_reaches_failsafe_by_the_third_boot() {
    let scratch = Scratch::new("brick-bootloop");
    let tree = scratch.join("upper-tree");
    write_file(&tree.join("upper/sbin/test-init"), "", 0o755);
    std::fs::create_dir_all(tree.join("work")).unwrap();
    let upper = scratch.join("upper.ext4");
    make_ext4(&upper, 32, Some(&tree), &[]);
    let boot_once = || {
        boot(&BootSpec {
            disks: vec![Disk::ro(&artifacts().root_sqsh), Disk::rw(&upper)],
            append: format!(
                "root=/dev/vda ovl.upper=/dev/vdb ovl.maxtries=2 ovl.onfail=halt {}",
                test_init_args("overlay-init status")
            ),
            timeout: TIMEOUT,
            ..Default::default()
        })
    };
    for attempt in 1..=2 {
        let result = boot_once();
        assert_ne!(result.exit, Exit::Panic, "{result:?}");
        assert_marker(&result, "overlay-init: BOOT FAILED");
        assert_marker(&result, "* step: check init");
        assert_exit(&result, Exit::PowerOff);
        assert_eq!(
            ext4_read_file(&upper, "/.overlay-init/bootcount"),
            Some(format!("attempts={attempt}\n").into_bytes()),
            "boot {attempt} was not counted"
        );
    }
    let result = boot_once();
    assert_ne!(result.exit, Exit::Panic, "{result:?}");
    assert_marker(&result, "WARNING: FAILSAFE boot");
    assert_marker(
        &result,
        "mode: failsafe (2 boots without `overlay-init mark-good` (ovl.maxtries=2))",
    );
    assert_test_passed(&result);
}
