//! Never brick (issue 11): states of the upper, and of the command line, that
//! used to hang the boot or loop it forever, against the real kernel (uevent
//! sockets, loop devices, mount namespaces).
//!
//! Run: `cargo test --test netns brick::`

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{in_private_mount_namespace, Ext4, Loop};
use overlay_init::boot::upper::{self, UpperKind};
use overlay_init::cmdline;
use overlay_init::devspec::DeviceSpec;
use overlay_init::overlay::Staging;

/// Runs `f` in a thread; a call still running after `limit` fails the test
/// instead of hanging it.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}: the boot would hang"))
}

/// `rootwait` waits for the root without limit, never for the upper: a missing
/// `ovl.upper=` is given up after the default device timeout (30 s) and the
/// boot goes on with a tmpfs upper.
#[test]
fn rootwait_does_not_wait_forever_for_a_missing_upper() {
    let parsed = cmdline::parse("rootwait");
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let config = parsed.config;
    let label = crate::support::unique_label("absent");
    let started = Instant::now();
    let (found, upper) = within(Duration::from_secs(120), move || {
        let upper = DeviceSpec::parse(&format!("LABEL={label}")).unwrap();
        overlay_init::lower::wait_for_devices(&config, &[], Some(&upper))
            .map_err(|e| format!("{e:#}"))
    })
    .expect("a missing upper is not an error");
    assert!(found.is_empty());
    assert_eq!(upper, None);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(29),
        "gave up early: {waited:?}"
    );
}

/// An ext4 upper made from `files` (path, contents) plus `upper/` and `work/`,
/// on a loop device, and a staging directory to mount it in.
fn persistent_upper(dir: &std::path::Path, files: &[(&str, &str)]) -> (Loop, Staging) {
    let src = dir.join("upper-src");
    crate::support::tree(&src, files);
    for d in ["upper", "work"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let image = dir.join("upper.ext4");
    Ext4::mib(16).contents(&src).write_to(&image);
    let dev = Loop::attach(&image, false);
    let staging = Staging::new(dir.join("staging"), dir.join("keep"));
    std::fs::create_dir_all(staging.upper_fs()).unwrap();
    std::fs::create_dir_all(&staging.keep_dir).unwrap();
    (dev, staging)
}

fn config(cmdline: &str) -> cmdline::Config {
    let parsed = cmdline::parse(cmdline);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    parsed.config
}

/// `.overlay-init` as a plain file used to give a tmpfs fallback on every
/// boot: now the upper is used, the file is moved into the trash, and the boot
/// is counted.
#[test]
fn a_state_dir_that_is_a_file_is_repaired_and_the_boot_stays_persistent() {
    in_private_mount_namespace(
        "a_state_dir_that_is_a_file_is_repaired_and_the_boot_stays_persistent",
        |dir| {
            let (dev, staging) = persistent_upper(dir, &[(".overlay-init", "junk\n")]);
            let config = config("ovl.maxtries=3");
            let kind = upper::mount_upper(&config, &staging, Some(&dev.dev), None).unwrap();
            assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
            assert_eq!(upper::record_boot(&config, &staging, &kind), Some(1));
            let state = staging.upper_fs().join(".overlay-init");
            assert!(std::fs::symlink_metadata(&state).unwrap().is_dir());
            let trash: Vec<_> = std::fs::read_dir(state.join("trash"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(trash.len(), 1, "{trash:?}");
            assert_eq!(
                std::fs::read_to_string(trash[0].join(".overlay-init")).unwrap(),
                "junk\n"
            );
        },
    );
}

/// `reset-request` as a directory: not obeyed (nor a reason to give the upper
/// up), moved aside; the reset step then finds nothing pending.
#[test]
fn a_reset_request_that_is_a_directory_is_moved_aside() {
    in_private_mount_namespace(
        "a_reset_request_that_is_a_directory_is_moved_aside",
        |dir| {
            let (dev, staging) = persistent_upper(
                dir,
                &[
                    (".overlay-init/reset-request/x", "odd\n"),
                    ("upper/etc/kept", "kept\n"),
                ],
            );
            let config = config("");
            let kind = upper::mount_upper(&config, &staging, Some(&dev.dev), None).unwrap();
            assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
            upper::record_boot(&config, &staging, &kind);
            let kind = upper::apply_reset(&config, &staging, &dev.dev, 0, &[]).unwrap();
            assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
            let fs = staging.upper_fs();
            assert!(!fs.join(".overlay-init/reset-request").exists());
            assert_eq!(
                std::fs::read_to_string(fs.join("upper/etc/kept")).unwrap(),
                "kept\n"
            );
        },
    );
}

/// With the counter at its limit, `ovl.reset` is applied (not ignored), the
/// counter cleared, and the boot is normal.
#[test]
fn ovl_reset_beats_the_boot_loop_failsafe() {
    in_private_mount_namespace("ovl_reset_beats_the_boot_loop_failsafe", |dir| {
        let (dev, staging) = persistent_upper(
            dir,
            &[
                (".overlay-init/bootcount", "attempts=3\n"),
                ("upper/etc/broken", "bad config\n"),
            ],
        );
        let config = config("ovl.maxtries=3 ovl.reset");
        let kind = upper::mount_upper(&config, &staging, Some(&dev.dev), None).unwrap();
        assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
        assert_eq!(upper::record_boot(&config, &staging, &kind), Some(1));
        let kind = upper::apply_reset(&config, &staging, &dev.dev, 0, &[]).unwrap();
        assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
        assert!(!staging.upper_fs().join("upper/etc/broken").exists());
    });
}

/// `ovl.failsafe` (explicit) never resets, whatever else asks.
#[test]
fn ovl_failsafe_with_ovl_reset_still_resets_nothing() {
    in_private_mount_namespace("ovl_failsafe_with_ovl_reset_still_resets_nothing", |dir| {
        let (dev, staging) = persistent_upper(
            dir,
            &[
                (".overlay-init/bootcount", "attempts=3\n"),
                (".overlay-init/reset-request", "requested-by=test\n"),
                ("upper/etc/broken", "bad config\n"),
            ],
        );
        // The parser already reports `ovl.reset` as ignored here; the pending
        // request stays.
        let config = cmdline::parse("ovl.maxtries=3 ovl.reset ovl.failsafe").config;
        let early = overlay_init::failsafe::early_reason(&config, false);
        let kind = upper::mount_upper(&config, &staging, Some(&dev.dev), early).unwrap();
        assert!(matches!(kind, UpperKind::Failsafe { .. }), "{kind:?}");
        assert_eq!(upper::record_boot(&config, &staging, &kind), None);
        let fs = staging.upper_fs();
        assert!(fs.join("upper/etc/broken").exists());
        assert!(fs.join(".overlay-init/reset-request").exists());
        assert_eq!(
            std::fs::read_to_string(fs.join(".overlay-init/bootcount")).unwrap(),
            "attempts=3\n"
        );
    });
}

/// A panic in the trash-wipe child runs the child's own hook (log and exit),
/// never PID 1's (which reboots or opens a root shell). The test stands in a
/// hook for PID 1's that leaves a mark; it runs alone in its own process.
#[test]
fn a_panic_in_the_background_child_never_runs_pid1s_hook() {
    in_private_mount_namespace(
        "a_panic_in_the_background_child_never_runs_pid1s_hook",
        |dir| {
            let mark = dir.join("pid1-hook-ran");
            let m = mark.clone();
            std::panic::set_hook(Box::new(move |_| {
                let _ = std::fs::write(&m, "failure handler\n");
            }));
            let pid = overlay_init::sys::process::spawn_detached(c"ovl-test-child", || {
                panic!("boom in the child")
            })
            .unwrap();
            let _ = std::panic::take_hook();
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let got = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(got, pid);
            assert!(libc::WIFEXITED(status), "status {status:#x}");
            assert_eq!(
                libc::WEXITSTATUS(status),
                overlay_init::sys::process::CHILD_PANIC_EXIT
            );
            assert!(!mark.exists(), "PID 1's panic hook ran in the child");
        },
    );
}

/// On a read-only filesystem the wipe stops at the first `EROFS`: a count and
/// the first few paths, not one failure (and one console warning) per file.
#[test]
fn the_wipe_stops_at_the_first_filesystem_wide_error() {
    in_private_mount_namespace("the_wipe_stops_at_the_first_filesystem_wide_error", |dir| {
        use overlay_init::sys::{dirfd, wipe};
        let target = dir.join("ro");
        std::fs::create_dir_all(&target).unwrap();
        let _tmpfs = crate::support::Mounted::tmpfs(&target);
        for d in 0..10 {
            let sub = target.join(format!("d{d}"));
            std::fs::create_dir(&sub).unwrap();
            for f in 0..100 {
                std::fs::write(sub.join(format!("f{f}")), "x").unwrap();
            }
        }
        rustix::mount::mount_remount(&target, rustix::mount::MountFlags::RDONLY, "").unwrap();
        let fd = dirfd::open_dir(&target).unwrap();
        let report = wipe::wipe_contents(std::os::fd::AsFd::as_fd(&fd), &target).unwrap();
        assert!(
            report
                .stopped
                .as_deref()
                .is_some_and(|s| s.contains("Read-only")),
            "{report:?}"
        );
        assert!(report.failure_count <= 2, "kept going: {report:?}");
        assert!(report.failures.len() <= wipe::FAILURES_LISTED, "{report:?}");
        assert!(!report.is_complete());
    });
}

/// An upper filled by root into ext4's reserve (`f_bavail` 0, `f_bfree` not):
/// root can still write there, so the upper is used (with a warning), not
/// given up for a tmpfs with factory settings.
#[test]
fn an_upper_filled_into_roots_reserve_is_still_used() {
    in_private_mount_namespace("an_upper_filled_into_roots_reserve_is_still_used", |dir| {
        let (dev, staging) = persistent_upper(dir, &[("upper/etc/kept", "kept\n")]);
        // 10% reserved for root; fill as root, then free 2 MiB: all of it below
        // the reserve line.
        crate::support::run(
            std::process::Command::new("tune2fs")
                .args(["-m", "10"])
                .arg(&dev.dev),
        );
        let fill = dir.join("fill");
        std::fs::create_dir_all(&fill).unwrap();
        {
            let _m = crate::support::Mounted::with_mount_command(&[dev.dev.as_os_str()], &fill);
            std::fs::write(fill.join("upper/spare"), vec![0u8; 2 << 20]).unwrap();
            let _ = std::process::Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", fill.join("upper/fill").display()))
                .args(["bs=64k", "status=none"])
                .status();
            std::fs::remove_file(fill.join("upper/spare")).unwrap();
            let st = rustix::fs::statvfs(&fill).unwrap();
            assert!(
                st.f_bavail * st.f_frsize < 512 << 10,
                "not into the reserve: {} free for users",
                st.f_bavail * st.f_frsize
            );
            assert!(
                st.f_bfree * st.f_frsize >= 1 << 20,
                "no reserve left: {} free",
                st.f_bfree * st.f_frsize
            );
        }
        let config = config("");
        let kind = upper::mount_upper(&config, &staging, Some(&dev.dev), None).unwrap();
        assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
    });
}

/// The handover in systemd's order, against the kernel: a tmpfs stands in for
/// the initramfs (chrooted into), a second tmpfs inside it for the new root.
/// A switch that fails leaves the initramfs whole (the rescue shell is still
/// there); a switch that works moves the new root onto `/`, and the old root
/// is then emptied through the descriptor opened before the switch.
#[test]
fn the_initramfs_is_freed_through_a_descriptor_after_the_switch() {
    in_private_mount_namespace(
        "the_initramfs_is_freed_through_a_descriptor_after_the_switch",
        |dir| {
            use overlay_init::sys::switch;
            let initramfs = dir.join("initramfs");
            std::fs::create_dir_all(&initramfs).unwrap();
            let _a = crate::support::Mounted::tmpfs(&initramfs);
            crate::support::tree(&initramfs, &[("bin/sh", "rescue shell\n"), ("init", "x")]);
            let new_root = initramfs.join("newroot");
            std::fs::create_dir_all(&new_root).unwrap();
            let _b = crate::support::Mounted::tmpfs(&new_root);
            crate::support::tree(&new_root, &[("etc/marker", "new root\n")]);
            rustix::process::chroot(&initramfs).unwrap();
            rustix::process::chdir("/").unwrap();

            let old_root = switch::open_old_root().unwrap();
            // Not a mount point: the move fails, nothing was freed.
            assert!(switch::enter_new_root(std::path::Path::new("/bin")).is_err());
            assert_eq!(
                std::fs::read_to_string("/bin/sh").unwrap(),
                "rescue shell\n"
            );

            switch::enter_new_root(std::path::Path::new("/newroot")).unwrap();
            assert_eq!(
                std::fs::read_to_string("/etc/marker").unwrap(),
                "new root\n"
            );
            let stats = switch::free_old_root(std::os::fd::AsFd::as_fd(&old_root)).unwrap();
            assert_eq!(stats.kept, 0, "{stats:?}");
            assert!(stats.removed >= 4, "{stats:?}");
            let left =
                overlay_init::sys::dirfd::list_names(std::os::fd::AsFd::as_fd(&old_root)).unwrap();
            assert!(left.is_empty(), "{left:?}");
            // The new root was not touched.
            assert_eq!(
                std::fs::read_to_string("/etc/marker").unwrap(),
                "new root\n"
            );
        },
    );
}

/// `upper -> /elsewhere` on the upper's filesystem used to put the changes
/// wherever it pointed while the boot reported persistent: the symlink is
/// refused by name, and the boot falls back to a tmpfs upper, saying why.
#[test]
fn an_upper_dir_that_is_a_symlink_is_never_followed() {
    in_private_mount_namespace("an_upper_dir_that_is_a_symlink_is_never_followed", |dir| {
        let elsewhere = dir.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let src = dir.join("upper-src");
        std::fs::create_dir_all(src.join("work")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, src.join("upper")).unwrap();
        let image = dir.join("upper.ext4");
        Ext4::mib(16).contents(&src).write_to(&image);
        let dev = Loop::attach(&image, false);
        let staging = Staging::new(dir.join("staging"), dir.join("keep"));
        std::fs::create_dir_all(staging.upper_fs()).unwrap();
        let config = config("");
        let mut kind = upper::mount_upper(&config, &staging, Some(&dev.dev), None).unwrap();
        assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
        let (upperdir, _) = upper::prepare_upper_dirs(&config, &staging, &mut kind).unwrap();
        match &kind {
            UpperKind::FallbackTmpfs { reason, .. } => {
                assert!(reason.contains("is a symlink"), "{reason}")
            }
            other => panic!("the symlinked upper was used: {other:?}"),
        }
        std::fs::write(upperdir.join("probe"), "x").unwrap();
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    });
}

/// `ovl.image=` and `ovl.lower=` image files are resolved inside the host
/// filesystem: a symlink or `..` that points outside it finds nothing there
/// (here: the squashfs outside is never attached).
#[test]
fn an_image_path_never_leaves_the_host_filesystem() {
    in_private_mount_namespace("an_image_path_never_leaves_the_host_filesystem", |dir| {
        let src = dir.join("src");
        crate::support::tree(&src, &[("etc/marker", "outside\n")]);
        crate::support::make_squashfs(&src, &dir.join("outside.sqsh"));
        let host = dir.join("host");
        std::fs::create_dir_all(host.join("images")).unwrap();
        std::os::unix::fs::symlink("../../outside.sqsh", host.join("images/rel")).unwrap();
        let target = dir.join("mnt");
        for path in ["/images/rel", "/../outside.sqsh"] {
            let err = overlay_init::lower::mount_image(&host, path, None, None, &target)
                .expect_err("an image outside the host was used");
            assert!(format!("{err:#}").contains(path), "{err:#}");
            assert!(!target.join("etc/marker").exists());
        }
    });
}

/// An ext4 upper holding `upper/etc/kept`, with `work` made by `make_work`
/// (given its path in the source tree), on a loop device; the upper mounted
/// by the "upper" step, and a lower directory beside it.
fn upper_with_work(
    dir: &std::path::Path,
    make_work: impl FnOnce(&std::path::Path),
) -> (Loop, Staging, UpperKind, std::path::PathBuf) {
    let src = dir.join("upper-src");
    crate::support::tree(&src, &[("upper/etc/kept", "a setting\n")]);
    make_work(&src.join("work"));
    let image = dir.join("upper.ext4");
    Ext4::mib(16).contents(&src).write_to(&image);
    let dev = Loop::attach(&image, false);
    let staging = Staging::new(dir.join("staging"), dir.join("keep"));
    std::fs::create_dir_all(staging.upper_fs()).unwrap();
    std::fs::create_dir_all(staging.root()).unwrap();
    let lower = dir.join("lower");
    crate::support::tree(&lower, &[("etc/from-lower", "lower\n")]);
    let kind = upper::mount_upper(&config(""), &staging, Some(&dev.dev), None).unwrap();
    assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
    (dev, staging, kind, lower)
}

/// The "upper dirs" and "overlay" steps, then the merged view shows the
/// upper's change and takes a write.
fn mount_and_check(staging: &Staging, kind: &mut UpperKind, lower: &std::path::Path) {
    let config = config("");
    let dirs = upper::prepare_upper_dirs(&config, staging, kind).unwrap();
    upper::mount_overlay(&config, staging, &[lower.to_path_buf()], dirs, kind).unwrap();
    let _overlay = crate::support::UnmountAllUnder(staging.root());
    let root = staging.root();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/kept")).unwrap(),
        "a setting\n"
    );
    std::fs::write(root.join("etc/new"), "x").unwrap();
}

/// Item 8: `work` that is not a directory (a regular file, a dangling
/// symlink) holds no change, but no `work/` can be made there: it is moved
/// into the trash and recreated, and the upper is used, not given up for a
/// tmpfs with factory settings.
#[test]
fn a_work_entry_that_is_no_directory_is_recreated_and_the_upper_used() {
    in_private_mount_namespace(
        "a_work_entry_that_is_no_directory_is_recreated_and_the_upper_used",
        |dir| {
            for odd in ["file", "dangling symlink"] {
                let case = dir.join(odd.replace(' ', "-"));
                let (dev, staging, mut kind, lower) = upper_with_work(&case, |work| match odd {
                    "file" => std::fs::write(work, "junk\n").unwrap(),
                    _ => std::os::unix::fs::symlink("/nowhere/at/all", work).unwrap(),
                });
                mount_and_check(&staging, &mut kind, &lower);
                assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()), "{odd}");
                let upper_fs = staging.upper_fs();
                assert!(std::fs::symlink_metadata(upper_fs.join("work"))
                    .unwrap()
                    .is_dir());
                assert!(upper_fs.join("upper/etc/new").exists(), "{odd}");
                let trash: Vec<_> = std::fs::read_dir(upper_fs.join(".overlay-init/trash"))
                    .unwrap()
                    .map(|e| e.unwrap().path().join("work"))
                    .collect();
                assert_eq!(trash.len(), 1, "{odd}: {trash:?}");
                assert!(std::fs::symlink_metadata(&trash[0]).is_ok(), "{trash:?}");
            }
        },
    );
}

/// Item 8: a `work/` whose leftovers the kernel cannot clear (an immutable
/// `work/work`, which overlayfs answers by mounting read-only) is emptied and
/// the overlay mounted again: the upper is used, not given up.
#[test]
fn an_overlay_stuck_on_work_leftovers_is_mounted_after_emptying_work() {
    in_private_mount_namespace(
        "an_overlay_stuck_on_work_leftovers_is_mounted_after_emptying_work",
        |dir| {
            let (dev, staging, mut kind, lower) = upper_with_work(dir, |work| {
                crate::support::tree(work, &[("work/stuck", "left by a crash\n")]);
            });
            let stuck = staging.upper_fs().join("work/work/stuck");
            crate::support::run(std::process::Command::new("chattr").arg("+i").arg(&stuck));
            // Without the retry the kernel mounts read-only (checked here
            // directly, so the test shows the state is a real one).
            let (u, w) = overlay_init::overlay::upper_dirs(&staging.upper_fs());
            let plain = overlay_init::overlay::mount_overlay(
                std::slice::from_ref(&lower),
                &u,
                &w,
                &staging.root(),
            );
            drop(crate::support::UnmountAllUnder(staging.root()));
            let why = format!("{:#}", plain.expect_err("the overlay mounted writable"));
            assert!(why.contains("read-only"), "{why}");
            mount_and_check(&staging, &mut kind, &lower);
            assert_eq!(kind, UpperKind::Persistent(dev.dev.clone()));
            assert!(!stuck.exists());
        },
    );
}
