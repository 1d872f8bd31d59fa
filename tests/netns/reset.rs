//! Factory reset against the real kernel: a loop-mounted ext4 upper under a
//! squashfs lower, the overlay mounted before and after the reset.
//!
//! Needs root, util-linux (`unshare`, `mount`), make_squashfs, mkfs.ext4 and the
//! loop, squashfs, ext4 and overlay drivers. Each test re-runs itself
//! (`--exact NAME`) under `unshare --mount --propagation private`, so its
//! mounts live in a mount namespace that dies with the child. Loop devices
//! come from `mount -o loop` (autoclear): they go away with the last mount,
//! even when the child dies; the parent checks that none is left.
//!
//! Run: `cargo test --test netns reset::`

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{in_private_mount_namespace, make_squashfs, run, Ext4, Mounted};
use overlay_init::reset::{self, BootFlags, ResetOutcome, Step};

const CMDLINE_RESET: BootFlags = BootFlags {
    cmdline_reset: true,
    failsafe: false,
};
const PLAIN_BOOT: BootFlags = BootFlags {
    cmdline_reset: false,
    failsafe: false,
};

/// The overlay of `lower` and the upper filesystem mounted at `upper_root`.
fn mount_overlay(lower: &Path, upper_root: &Path, target: &Path) -> Mounted {
    Mounted::overlay(
        lower,
        &reset::upperdir(upper_root),
        &reset::workdir(upper_root),
        target,
    )
}

/// The lower: a squashfs with a few files, one directory to be made opaque
/// and one file to be whited out.
fn make_lower(dir: &Path) -> PathBuf {
    let tree = dir.join("lower-tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("opaque-me")).unwrap();
    fs::write(tree.join("etc/os-release"), "NAME=factory\n").unwrap();
    fs::write(tree.join("etc/remove-me"), "from the lower\n").unwrap();
    fs::write(
        tree.join("opaque-me/old-file"),
        "hidden by the opaque dir\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("os-release", tree.join("etc/link")).unwrap();
    let image = dir.join("lower.sqsh");
    make_squashfs(&tree, &image);
    image
}

/// One entry of a tree listing: kind, and content or link target.
type Listing = BTreeMap<Vec<u8>, String>;

/// Everything under `root` (dotfiles too, never following links), keyed by
/// relative path bytes.
fn listing(root: &Path) -> Listing {
    fn walk(root: &Path, dir: &Path, out: &mut Listing) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = meta.file_type();
            let what = if ft.is_dir() {
                walk(root, &path, out);
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                format!("file {:?}", fs::read(&path).unwrap())
            } else if ft.is_char_device() {
                format!(
                    "char {}:{}",
                    rustix::fs::major(meta.rdev()),
                    rustix::fs::minor(meta.rdev())
                )
            } else {
                format!("other mode {:o}", meta.mode())
            };
            out.insert(rel, what);
        }
    }
    let mut out = Listing::new();
    walk(root, root, &mut out);
    out
}

/// The world a test runs in: a lower, an ext4 upper filesystem, and things
/// outside the upper that a wipe must never touch.
struct World {
    scratch: PathBuf,
    upper_image: PathBuf,
    // Field order is drop order: the upper's mount goes before the lower's.
    upper_mount: Option<Mounted>,
    lower_mount: Mounted,
}

impl World {
    fn new(scratch: &Path) -> Self {
        let lower_image = make_lower(scratch);
        let upper_image = scratch.join("upper.ext4");
        Ext4::mib(128).write_to(&upper_image);
        let lower_mount = Mounted::loop_image(&lower_image, "squashfs", &scratch.join("lower"));
        let upper_mount = Mounted::loop_image(&upper_image, "ext4", &scratch.join("overlay"));
        for dir in [
            reset::upperdir(&upper_mount.target),
            reset::workdir(&upper_mount.target),
        ] {
            fs::create_dir_all(dir).unwrap();
        }
        fs::create_dir_all(scratch.join("outside")).unwrap();
        fs::write(scratch.join("outside/secret"), "must survive\n").unwrap();
        World {
            scratch: scratch.to_owned(),
            upper_image,
            upper_mount: Some(upper_mount),
            lower_mount,
        }
    }

    fn lower(&self) -> &Path {
        &self.lower_mount.target
    }

    fn upper_root(&self) -> PathBuf {
        self.scratch.join("overlay")
    }

    fn merged(&self) -> PathBuf {
        self.scratch.join("merged")
    }

    fn lower_dev(&self) -> Option<u64> {
        Some(fs::metadata(self.lower()).unwrap().dev())
    }

    fn mount_overlay(&self) -> Mounted {
        mount_overlay(self.lower(), &self.upper_root(), &self.merged())
    }

    /// Write every awkward kind of change through the overlay, so that the
    /// upper holds what the overlay itself makes (whiteouts, opaque dirs).
    fn fill_through_overlay(&self, deep_levels: usize) {
        let merged = self.mount_overlay();
        let m = &merged.target;
        fs::write(m.join(".hidden"), "dotfile").unwrap();
        fs::create_dir_all(m.join(".config/app")).unwrap();
        fs::write(m.join(".config/app/.settings"), "x").unwrap();
        fs::write(m.join("etc/os-release"), "NAME=modified\n").unwrap();
        fs::remove_file(m.join("etc/remove-me")).unwrap(); // whiteout in the upper
        fs::remove_dir_all(m.join("opaque-me")).unwrap();
        fs::create_dir(m.join("opaque-me")).unwrap(); // opaque dir in the upper
        fs::write(m.join("opaque-me/new-file"), "new").unwrap();
        fs::write(m.join(OsStr::from_bytes(b"odd\nname \xff\xfe")), "odd").unwrap();
        fs::write(m.join("-rf"), "dash").unwrap();
        std::os::unix::fs::symlink(
            self.scratch.join("outside/secret"),
            m.join("link-to-secret"),
        )
        .unwrap();
        std::os::unix::fs::symlink(self.scratch.join("outside"), m.join("link-to-outside"))
            .unwrap();
        rustix::fs::setxattr(
            m.join(".hidden"),
            "user.note",
            b"xattr",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let mut deep = m.join("deep");
        for level in 0..deep_levels {
            deep.push(format!("d{level}"));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join(".bottom"), "deep").unwrap();
        for i in 0..300 {
            fs::write(m.join("deep").join(format!("f{i}")), "w").unwrap();
        }
        assert_ne!(
            listing(m),
            listing(self.lower()),
            "the fill must change what the overlay shows"
        );
        merged.unmount();
    }

    /// Stop using the upper filesystem (as a power cut would, minus the cut).
    fn unmount_upper(&mut self) {
        self.upper_mount.take().expect("upper is mounted").unmount();
    }
}

fn upper_has_whiteout_and_opaque_dir(upper: &Path) {
    let meta = fs::symlink_metadata(upper.join("etc/remove-me")).unwrap();
    assert!(
        meta.file_type().is_char_device() && meta.rdev() == 0,
        "overlay made a 0:0 whiteout"
    );
    let mut value = [0u8; 4];
    let n = rustix::fs::lgetxattr(
        upper.join("opaque-me"),
        "trusted.overlay.opaque",
        &mut value,
    )
    .unwrap();
    assert_eq!(&value[..n], b"y", "overlay made an opaque directory");
}

#[test]
fn reset_leaves_exactly_the_lower_and_nothing_outside_is_touched() {
    in_private_mount_namespace(
        "reset_leaves_exactly_the_lower_and_nothing_outside_is_touched",
        |scratch| {
            let world = World::new(scratch);
            let upper_root = world.upper_root();
            let upper = reset::upperdir(&upper_root);
            world.fill_through_overlay(200);
            upper_has_whiteout_and_opaque_dir(&upper);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                upper.join("extra-whiteout"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .unwrap();
            fs::write(upper.join("immutable"), "chattr +i").unwrap();
            run(Command::new("chattr")
                .arg("+i")
                .arg(upper.join("immutable")));

            // A bind mount of another filesystem, and one of this same filesystem.
            fs::create_dir_all(scratch.join("bind-source")).unwrap();
            fs::write(scratch.join("bind-source/keep"), "other fs").unwrap();
            fs::create_dir_all(upper_root.join("same-fs-source")).unwrap();
            fs::write(upper_root.join("same-fs-source/keep"), "same fs").unwrap();
            fs::create_dir_all(upper.join("mnt/other-fs")).unwrap();
            fs::create_dir_all(upper.join("deep/d0/same-fs")).unwrap();
            let other_fs = Mounted::bind(&scratch.join("bind-source"), &upper.join("mnt/other-fs"));
            let same_fs = Mounted::bind(
                &upper_root.join("same-fs-source"),
                &upper.join("deep/d0/same-fs"),
            );
            let outside_before = listing(&scratch.join("outside"));
            let assert_bind_sources_untouched = || {
                assert_eq!(
                    fs::read(scratch.join("bind-source/keep")).unwrap(),
                    b"other fs"
                );
                assert_eq!(
                    fs::read(upper_root.join("same-fs-source/keep")).unwrap(),
                    b"same fs"
                );
            };

            let outcome =
                reset::apply_pending(&upper_root, CMDLINE_RESET, world.lower_dev()).unwrap();
            let ResetOutcome::Done { steps, trash, .. } = outcome else {
                panic!("expected a reset, got {outcome:?}")
            };
            let names: Vec<_> = steps.iter().map(|s| s.step).collect();
            assert_eq!(names, Step::ALL, "every durable step ran, in order");
            assert!(trash.starts_with(reset::trash_dir(&upper_root)));
            // The bind mounts went along with the old upper into the trash.
            let other_fs = other_fs.moved_to(trash.join("upper/mnt/other-fs"));
            let same_fs = same_fs.moved_to(trash.join("upper/deep/d0/same-fs"));

            let merged = world.mount_overlay();
            assert_eq!(
                listing(&merged.target),
                listing(world.lower()),
                "after the reset the overlay shows exactly the lower"
            );
            assert!(listing(&upper).is_empty(), "the upper is empty");
            merged.unmount();
            assert!(!reset::status(&upper_root).unwrap().reset_pending);
            assert_eq!(reset::status(&upper_root).unwrap().trash_generations, 1);

            let report = reset::remove_trash_now(&upper_root).unwrap();
            assert!(report.failures.is_empty(), "{:?}", report.failures);
            assert!(
                report.flattened > 0,
                "the 200-level tree was deeper than the open-descriptor bound"
            );
            let mut left: Vec<_> = report.mount_points_left.clone();
            left.sort();
            assert_eq!(
                left,
                [
                    trash.join("upper/deep/d0/same-fs"),
                    trash.join("upper/mnt/other-fs")
                ]
            );
            // Only the mount points and the directories leading to them remain.
            let remaining: Vec<_> = listing(&reset::trash_dir(&upper_root))
                .into_keys()
                .collect();
            let gen = trash.file_name().unwrap().as_bytes().to_vec();
            let expected: Vec<Vec<u8>> = [
                "",
                "/upper",
                "/upper/deep",
                "/upper/deep/d0",
                "/upper/deep/d0/same-fs",
                "/upper/deep/d0/same-fs/keep",
                "/upper/mnt",
                "/upper/mnt/other-fs",
                "/upper/mnt/other-fs/keep",
            ]
            .iter()
            .map(|suffix| [gen.as_slice(), suffix.as_bytes()].concat())
            .collect();
            assert_eq!(remaining, expected);

            // Nothing outside the upper was touched.
            assert_bind_sources_untouched();
            assert_eq!(listing(&scratch.join("outside")), outside_before);

            // Once the mounts are gone the rest of the trash goes too.
            other_fs.unmount();
            same_fs.unmount();
            let report = reset::remove_trash_now(&upper_root).unwrap();
            assert!(report.is_complete(), "{report:?}");
            assert_eq!(reset::status(&upper_root).unwrap().trash_generations, 0);
            assert_bind_sources_untouched();
        },
    );
}

#[test]
fn request_is_honoured_at_next_boot_then_cleared() {
    in_private_mount_namespace("request_is_honoured_at_next_boot_then_cleared", |scratch| {
        let world = World::new(scratch);
        let upper_root = world.upper_root();
        world.fill_through_overlay(3);

        assert!(matches!(
            reset::apply_pending(&upper_root, PLAIN_BOOT, world.lower_dev()).unwrap(),
            ResetOutcome::NotRequested
        ));
        assert!(
            !listing(&reset::upperdir(&upper_root)).is_empty(),
            "no request: the upper is kept"
        );

        reset::request(&upper_root).unwrap();
        let status = reset::status(&upper_root).unwrap();
        assert!(status.reset_pending);
        assert_eq!(status.requested_by.as_deref(), Some("cli"));
        assert!(reset::cancel(&upper_root).unwrap());
        assert!(
            !reset::cancel(&upper_root).unwrap(),
            "nothing left to cancel"
        );
        assert!(!reset::status(&upper_root).unwrap().reset_pending);
        reset::request(&upper_root).unwrap();

        let failsafe = BootFlags {
            cmdline_reset: true,
            failsafe: true,
        };
        assert_eq!(
            reset::apply_pending(&upper_root, failsafe, world.lower_dev()).unwrap(),
            ResetOutcome::SkippedFailsafe
        );
        assert!(
            reset::status(&upper_root).unwrap().reset_pending,
            "failsafe leaves the request pending"
        );
        assert!(
            !listing(&reset::upperdir(&upper_root)).is_empty(),
            "failsafe leaves the upper alone"
        );

        let outcome = reset::apply_pending(&upper_root, PLAIN_BOOT, world.lower_dev()).unwrap();
        let ResetOutcome::Done { steps, .. } = outcome else {
            panic!("expected a reset, got {outcome:?}")
        };
        assert!(
            !steps.iter().any(|s| s.step == Step::RecordRequest),
            "a recorded request is not recorded again"
        );
        assert!(listing(&reset::upperdir(&upper_root)).is_empty());
        assert!(!reset::status(&upper_root).unwrap().reset_pending);
        let merged = world.mount_overlay();
        assert_eq!(listing(&merged.target), listing(world.lower()));
    });
}

#[test]
fn refuses_when_upper_and_lower_share_a_device() {
    in_private_mount_namespace("refuses_when_upper_and_lower_share_a_device", |scratch| {
        let world = World::new(scratch);
        let upper_root = world.upper_root();
        world.fill_through_overlay(2);
        let before = listing(&upper_root);
        reset::request(&upper_root).unwrap();
        let upper_dev = Some(fs::metadata(&upper_root).unwrap().dev());
        let err = reset::apply_pending(&upper_root, CMDLINE_RESET, upper_dev).unwrap_err();
        assert!(format!("{err:#}").contains("same device"), "{err:#}");
        assert!(
            reset::status(&upper_root).unwrap().reset_pending,
            "the request stays pending"
        );
        let after: Listing = listing(&upper_root)
            .into_iter()
            .filter(|(k, _)| !k.starts_with(b".overlay-init"))
            .collect();
        assert_eq!(after, before, "nothing was touched");
    });
}

#[test]
fn request_refuses_a_tmpfs_upper() {
    in_private_mount_namespace("request_refuses_a_tmpfs_upper", |scratch| {
        let tmpfs = Mounted::tmpfs(&scratch.join("tmp-upper"));
        let err = reset::request(&tmpfs.target).unwrap_err();
        assert!(format!("{err:#}").contains("tmpfs"), "{err:#}");
        assert!(!reset::status(&tmpfs.target).unwrap().reset_pending);
    });
}

#[test]
fn background_cleanup_empties_the_trash() {
    in_private_mount_namespace("background_cleanup_empties_the_trash", |scratch| {
        let world = World::new(scratch);
        let upper_root = world.upper_root();
        world.fill_through_overlay(60);
        assert!(
            reset::start_trash_cleanup(&upper_root).unwrap().is_none(),
            "no trash: no child"
        );
        reset::apply_pending(&upper_root, CMDLINE_RESET, world.lower_dev()).unwrap();
        let merged = world.mount_overlay();
        let pid = reset::start_trash_cleanup(&upper_root)
            .unwrap()
            .expect("a child removes the trash");
        let child = rustix::process::Pid::from_raw(pid).expect("a child pid is positive");
        let (_, status) =
            rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty())
                .unwrap()
                .expect("the child was waited for");
        assert_eq!(
            status.exit_status(),
            Some(0),
            "the trash remover's exit: {status:?}"
        );
        assert!(listing(&reset::trash_dir(&upper_root)).is_empty());
        assert_eq!(listing(&merged.target), listing(world.lower()));
    });
}

/// What the upper filesystem holds at a given instant.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// The old upper, and a reset still pending.
    OldPending,
    /// An empty upper; `pending` says whether a reset is still recorded.
    Clean { pending: bool },
}

fn classify(upper_root: &Path, old_upper: &Listing) -> State {
    let upper = listing(&reset::upperdir(upper_root));
    let pending = reset::status(upper_root).unwrap().reset_pending;
    if upper.is_empty() {
        State::Clean { pending }
    } else {
        assert_eq!(
            &upper, old_upper,
            "the upper is either the old one or empty, never a mix"
        );
        assert!(
            pending,
            "the old upper is only ever seen with the request still pending"
        );
        State::OldPending
    }
}

/// What the disk must hold after a power cut right after `step`.
fn expected_after(step: Step) -> State {
    match step {
        Step::RecordRequest | Step::Prepare | Step::CarryKept | Step::SwapWork => State::OldPending,
        Step::SwapUpper => State::Clean { pending: true },
        Step::ClearRequest => State::Clean { pending: false },
    }
}

/// Boot the snapshot/stopped upper again without `ovl.reset` and check that
/// the result is a clean upper and that the overlay shows the lower.
fn next_boot_is_clean(world: &World, upper_root: &Path) {
    reset::apply_pending(upper_root, PLAIN_BOOT, world.lower_dev()).unwrap();
    assert_eq!(
        classify(upper_root, &Listing::new()),
        State::Clean { pending: false }
    );
    let merged = mount_overlay(
        world.lower(),
        upper_root,
        &world.scratch.join("merged-next"),
    );
    assert_eq!(listing(&merged.target), listing(world.lower()));
}

#[test]
fn power_cut_after_each_durable_step_leaves_old_or_clean() {
    in_private_mount_namespace(
        "power_cut_after_each_durable_step_leaves_old_or_clean",
        |scratch| {
            let mut world = World::new(scratch);
            let upper_root = world.upper_root();
            world.fill_through_overlay(5);
            let old_upper = listing(&reset::upperdir(&upper_root));
            // Nothing the fill wrote may be left for writeback to flush later:
            // only what the reset itself fsyncs should reach the snapshots.
            run(Command::new("sync").arg("-f").arg(&upper_root));

            // The loop driver writes to the backing file, so a copy of it taken
            // while the filesystem is still mounted holds exactly what reached
            // the "disk": a power cut at that instant.
            let mut snapshots = Vec::new();
            let image = world.upper_image.clone();
            let mut hook = |step: Step| {
                let snapshot = scratch.join(format!("cut-after-{}.ext4", step.name()));
                fs::copy(&image, &snapshot).unwrap();
                snapshots.push((step, snapshot));
                Ok(())
            };
            reset::apply_pending_with_hook(
                &upper_root,
                CMDLINE_RESET,
                world.lower_dev(),
                &mut hook,
            )
            .unwrap();
            world.unmount_upper();
            assert_eq!(
                snapshots.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                Step::ALL
            );

            for (step, snapshot) in snapshots {
                let mount = Mounted::loop_image(&snapshot, "ext4", &scratch.join("cut"));
                assert_eq!(
                    classify(&mount.target, &old_upper),
                    expected_after(step),
                    "power cut after {}",
                    step.name()
                );
                next_boot_is_clean(&world, &mount.target);
                mount.unmount();
            }
        },
    );
}

#[test]
fn reset_stopped_after_each_step_is_finished_by_the_next_boot() {
    in_private_mount_namespace(
        "reset_stopped_after_each_step_is_finished_by_the_next_boot",
        |scratch| {
            for (trigger, flags) in [("cli", PLAIN_BOOT), ("cmdline", CMDLINE_RESET)] {
                for stop_at in Step::ALL {
                    if trigger == "cli" && stop_at == Step::RecordRequest {
                        continue; // a recorded request is not recorded again
                    }
                    let case = scratch.join(format!("{trigger}-{}", stop_at.name()));
                    fs::create_dir_all(&case).unwrap();
                    let world = World::new(&case);
                    let upper_root = world.upper_root();
                    world.fill_through_overlay(4);
                    let old_upper = listing(&reset::upperdir(&upper_root));
                    if trigger == "cli" {
                        reset::request(&upper_root).unwrap();
                    }
                    let mut hook = |step: Step| {
                        if step == stop_at {
                            anyhow::bail!("injected stop after {}", step.name())
                        }
                        Ok(())
                    };
                    let err = reset::apply_pending_with_hook(
                        &upper_root,
                        flags,
                        world.lower_dev(),
                        &mut hook,
                    )
                    .unwrap_err();
                    assert!(format!("{err:#}").contains("injected stop"), "{err:#}");
                    assert_eq!(
                        classify(&upper_root, &old_upper),
                        expected_after(stop_at),
                        "{trigger}: stopped after {}",
                        stop_at.name()
                    );
                    next_boot_is_clean(&world, &upper_root);
                }
            }
        },
    );
}
