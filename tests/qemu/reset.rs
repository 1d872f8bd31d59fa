//! Factory reset end to end in QEMU (issue 3): files written in boot 1 are gone
//! after a boot with `ovl.reset` (or after `overlay-init reset` from the running
//! system), and a boot after that keeps what it writes again.
//!
//! Run: `cargo test --test qemu reset::` (as root).

use crate::support::*;

/// Boot the demo root with the ext4 upper at `upper`, running `script`. The
/// script runs `overlay-init mark-good` first, as a system that booted fine
/// does, so four boots in a row stay clear of the boot-loop failsafe.
fn boot_upper(upper: &std::path::Path, extra: &str, script: &str) -> BootResult {
    boot_upper_on(Arch::X86_64, upper, extra, script)
}

/// [`boot_upper`] on `arch`.
fn boot_upper_on(arch: Arch, upper: &std::path::Path, extra: &str, script: &str) -> BootResult {
    let a = artifacts_for(arch);
    let script = &format!("/sbin/overlay-init mark-good; {script}");
    let result = boot(&BootSpec {
        append: format!(
            "root=/dev/vda ovl.upper=/dev/vdb {extra} {}",
            test_init_args(script)
        ),
        arch,
        disks: vec![Disk::ro(&a.root_sqsh), Disk::rw(upper)],

        ..Default::default()
    });
    assert_test_passed(&result);
    result
}

/// Files of every kind a reset must take away: plain, dotfile, deep, a whiteout
/// (deleting a lower file) and an opaque directory (a lower directory replaced).
const FILL: &str =
    "echo one > /root/file; echo dot > /root/.hidden; mkdir -p /a/b/c/d; echo deep > /a/b/c/d/e; \
     rm /etc/motd; rm -r /etc/init.d; mkdir /etc/init.d; echo new > /etc/init.d/only; sync";

/// Prints what the reset must have restored.
const CHECK: &str = "for f in /root/file /root/.hidden /a/b/c/d/e /etc/init.d/only; do test -e $f && echo LEFT=$f; done; \
     echo MOTD=$(test -e /etc/motd && echo back); echo RCS=$(test -e /etc/init.d/rcS && echo back); \
     ls -A /overlay/upper | sed 's/^/UPPER-HAS=/'";

fn assert_factory_state(result: &BootResult) {
    assert_no_output(result, "LEFT=");
    assert_output(result, "MOTD=back");
    assert_output(result, "RCS=back");
    // The fresh upper holds nothing at all but what this boot wrote.
    let left = result.output_values("UPPER-HAS=");
    assert!(
        left.is_empty(),
        "the upper still holds {left:?} after the reset\n{result:?}"
    );
}

#[test]
fn reset_from_the_kernel_command_line() {
    reset_from_the_command_line(Arch::X86_64);
}

#[test]
fn reset_from_the_kernel_command_line_aarch64() {
    reset_from_the_command_line(Arch::Aarch64);
}

fn reset_from_the_command_line(arch: Arch) {
    let scratch = Scratch::new("reset-cmdline");
    let upper = fresh_copy(&artifacts_for(arch).upper_ext4, &scratch, "upper.ext4");

    let first = boot_upper_on(
        arch,
        &upper,
        "",
        &format!("{FILL}; echo HIDDEN=$(cat /root/.hidden)"),
    );
    assert_output(&first, "HIDDEN=dot");

    let second = boot_upper_on(arch, &upper, "ovl.reset", CHECK);
    assert_factory_state(&second);
    assert_marker(
        &second,
        "reset: ovl.reset on the kernel command line asked for a factory reset",
    );

    // Boot 3, without ovl.reset, keeps what it writes; the old upper, removed
    // in the background, is gone once `reset --finish` returns.
    let third = boot_upper_on(
        arch,
        &upper,
        "",
        "echo three > /root/three; /sbin/overlay-init reset --finish; \
         ls -A /overlay/.overlay-init/trash | sed 's/^/TRASH=/'; sync",
    );
    assert_no_marker(&third, "asked for a factory reset");
    assert!(
        third.output_values("TRASH=").is_empty(),
        "trash left after reset --finish\n{third:?}"
    );
    let fourth = boot_upper_on(arch, &upper, "", "echo GOT=$(cat /root/three)");
    assert_output(&fourth, "GOT=three");
}

#[test]
fn reset_requested_from_the_running_system() {
    let scratch = Scratch::new("reset-cli");
    let upper = fresh_copy(&artifacts().upper_ext4, &scratch, "upper.ext4");

    // Boot 1: fill, ask for a reset, change our mind.
    let first = boot_upper(
        &upper,
        "",
        &format!(
            "{FILL}; /sbin/overlay-init reset; /sbin/overlay-init status | sed 's/^/STATUS1 /'; \
             /sbin/overlay-init reset --cancel; /sbin/overlay-init status | sed 's/^/STATUS2 /'"
        ),
    );
    assert_output(&first, "STATUS1 reset: pending (requested by cli)");
    assert_output(&first, "STATUS2 reset: none pending");

    // Boot 2: the cancelled request did nothing; ask again, for real.
    let second = boot_upper(
        &upper,
        "",
        "echo HIDDEN=$(cat /root/.hidden); /sbin/overlay-init reset",
    );
    assert_no_marker(&second, "asked for a factory reset");
    assert_output(&second, "HIDDEN=dot");

    // Boot 3: the request is honoured before the overlay is mounted, then cleared.
    let third = boot_upper(
        &upper,
        "",
        &format!("{CHECK}; /sbin/overlay-init status | sed 's/^/STATUS /'"),
    );
    assert_marker(
        &third,
        "reset: a pending request (overlay-init reset) asked for a factory reset",
    );
    assert_factory_state(&third);
    assert_output(&third, "STATUS reset: none pending");
}
