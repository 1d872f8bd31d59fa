//! Mount-namespace tests: run a test body in a child process inside a private mount
//! namespace (`unshare --mount --propagation private`), with a scratch directory, mounts and
//! loop devices that are always cleaned up.
//!
//! The child is the same test binary run for one test (`--exact MODULE::NAME`): the module is
//! the file of the caller (`tests/netns/reset.rs` is `reset`), so a test passes only its own
//! function name.

use std::ffi::{CStr, OsStr};
use std::fs;
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use overlay_init::sys::loopdev;
use overlay_init::sys::uevent::{Received, UeventSocket};

use super::base::{run, Scratch};
use rustix::mount::{MountFlags, UnmountFlags};

const CHILD_TEST_ENV: &str = "OVERLAY_INIT_NETNS_TEST";
const CHILD_DIR_ENV: &str = "OVERLAY_INIT_NETNS_DIR";

/// Run `body` in a private mount namespace with a fresh scratch directory.
/// In the parent this re-executes the test binary for `test_name` only; in the
/// child it runs `body`. Mounts die with the child's namespace; the parent then
/// checks that no loop device is still bound to a file in the scratch directory.
#[track_caller]
pub fn in_private_mount_namespace(test_name: &str, body: impl FnOnce(&Path)) {
    let test_name = &test_path(Location::caller(), test_name);
    if std::env::var(CHILD_TEST_ENV).as_deref() == Ok(test_name) {
        let dir = PathBuf::from(std::env::var_os(CHILD_DIR_ENV).expect("scratch dir is set"));
        // Declared first so it drops last, after the body's loop guards: unmounting
        // then frees the (auto-clearing) loop devices before the parent checks.
        let _unmount = UnmountAllUnder(dir.clone());
        body(&dir);
        return;
    }
    let scratch = Scratch::new(&test_name.replace("::", "-"));
    rerun(test_name, &[(CHILD_DIR_ENV, scratch.path().as_os_str())]);
    assert_no_loop_device_under(scratch.path());
}

/// `MODULE::NAME`, the test's path in its binary: the module is the caller's file name.
fn test_path(caller: &Location, test_name: &str) -> String {
    let module = Path::new(caller.file())
        .file_stem()
        .and_then(OsStr::to_str)
        .expect("a test file name");
    format!("{module}::{test_name}")
}

/// True in the child that [`rerun_in_private_mount_namespace`] started for
/// `test_name`: there the test body runs for real.
#[track_caller]
pub fn is_namespace_child(test_name: &str) -> bool {
    std::env::var(CHILD_TEST_ENV).as_deref() == Ok(&test_path(Location::caller(), test_name))
}

/// Re-execute the test binary for `test_name` alone, with `envs` set, under
/// `unshare --mount --propagation private`, and fail unless that one test ran
/// and passed there.
#[track_caller]
pub fn rerun_in_private_mount_namespace(test_name: &str, envs: &[(&str, &OsStr)]) {
    rerun(&test_path(Location::caller(), test_name), envs);
}

fn rerun(test_name: &str, envs: &[(&str, &OsStr)]) {
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_TEST_ENV, test_name)
        .envs(envs.iter().copied())
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{test_name} failed in its mount namespace ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // An empty filter match would make the child "pass" without running.
    assert!(
        stdout.contains("1 passed"),
        "child did not run {test_name}:\n{stdout}"
    );
}

/// Unmounts every mount below a directory, deepest first, on drop.
pub struct UnmountAllUnder(pub PathBuf);

impl Drop for UnmountAllUnder {
    fn drop(&mut self) {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(&self.0))
            .collect();
        points.reverse();
        for p in points {
            let _ = rustix::mount::unmount(p, UnmountFlags::empty());
        }
    }
}

/// A mount, lazily unmounted on drop (which also frees an auto-clearing loop
/// device once nothing else holds it).
pub struct Mounted {
    pub target: PathBuf,
}

impl Mounted {
    /// `source` mounted read-only on `target` (made if missing) by mount(2).
    pub fn read_only(source: &Path, target: &Path, fstype: &str) -> rustix::io::Result<Self> {
        fs::create_dir_all(target).expect("creating mount point");
        rustix::mount::mount(source, target, fstype, MountFlags::RDONLY, None::<&CStr>)?;
        Ok(Mounted {
            target: target.to_owned(),
        })
    }

    /// `mount ARGS... TARGET` (util-linux); `target` is made if missing.
    pub fn with_mount_command(args: &[&OsStr], target: &Path) -> Self {
        fs::create_dir_all(target).expect("creating mount point");
        run(Command::new("mount").args(args).arg(target));
        Mounted {
            target: target.to_owned(),
        }
    }

    /// An image file mounted through an auto-clearing loop device (`-o loop`).
    pub fn loop_image(image: &Path, fstype: &str, target: &Path) -> Self {
        Mounted::with_mount_command(
            &[
                "-t".as_ref(),
                fstype.as_ref(),
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
            ],
            target,
        )
    }

    pub fn bind(source: &Path, target: &Path) -> Self {
        Mounted::with_mount_command(&["--bind".as_ref(), source.as_os_str()], target)
    }

    pub fn tmpfs(target: &Path) -> Self {
        Mounted::with_mount_command(&["-t".as_ref(), "tmpfs".as_ref(), "tmpfs".as_ref()], target)
    }

    pub fn overlay(lower: &Path, upperdir: &Path, workdir: &Path, target: &Path) -> Self {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upperdir.display(),
            workdir.display()
        );
        Mounted::with_mount_command(
            &[
                "-t".as_ref(),
                "overlay".as_ref(),
                "overlay".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
            ],
            target,
        )
    }

    /// The same mount, after a rename of a directory above it moved it.
    pub fn moved_to(mut self, target: PathBuf) -> Self {
        self.target = target;
        self
    }

    /// Unmount now (not lazily), failing the test if that fails.
    pub fn unmount(mut self) {
        let target = std::mem::take(&mut self.target);
        rustix::mount::unmount(&target, UnmountFlags::empty())
            .unwrap_or_else(|e| panic!("unmounting {}: {e}", target.display()));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.target.as_os_str().is_empty() {
            let _ = rustix::mount::unmount(&self.target, UnmountFlags::DETACH);
        }
    }
}

/// A loop device made with `losetup`, detached on drop (its partitions go
/// with it).
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    pub fn attach(file: &Path, read_only: bool) -> Loop {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if read_only {
            cmd.arg("--read-only");
        }
        cmd.arg(file);
        // `--find` races with loop devices other tests (in parallel) free or take between
        // its lookup and its attach: ENXIO/EBUSY then, and the next `--find` picks another.
        for _ in 0..4 {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            if out.status.success() {
                let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
                return Loop {
                    dev: PathBuf::from(dev),
                };
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !(stderr.contains("No such device or address")
                || stderr.contains("Device or resource busy"))
            {
                break;
            }
        }
        // The last try, failing with the command's output.
        Loop {
            dev: PathBuf::from(run(&mut cmd)),
        }
    }

    /// Attach `image` with partition scanning, and make sure the kernel knows
    /// each of `partitions` (number, first sector, sectors). A kernel built
    /// without partition parsers finds none by scanning, so those missing are
    /// added with BLKPG (`addpart`), the way `partx` does.
    pub fn attach_partitioned(image: &Path, partitions: &[(u32, u64, u64)]) -> Loop {
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(image));
        let guard = Loop {
            dev: PathBuf::from(dev),
        };
        for &(number, start, sectors) in partitions {
            let sysfs = format!("/sys/class/block/{}p{number}", guard.name());
            if !Path::new(&sysfs).exists() {
                run(Command::new("addpart").arg(&guard.dev).args([
                    number.to_string(),
                    start.to_string(),
                    sectors.to_string(),
                ]));
            }
        }
        guard
    }

    /// The kernel's name for the device (`loop3`).
    pub fn name(&self) -> &str {
        self.dev
            .file_name()
            .and_then(OsStr::to_str)
            .expect("losetup prints /dev/loopN")
    }

    /// The device path as a string (`/dev/loop3`).
    pub fn dev_str(&self) -> &str {
        self.dev.to_str().expect("losetup prints /dev/loopN")
    }

    pub fn partition(&self, number: u32) -> PathBuf {
        PathBuf::from(format!("{}p{number}", self.dev.display()))
    }

    /// Detach, and return once the kernel has announced it: its `change`
    /// uevent for the device with no backing file left. The kernel detaches
    /// at the last close, so a device another process holds open (a
    /// concurrent test's coldplug probe, blkid, udev) goes later, and a
    /// uevent listener opened before this call would otherwise judge too
    /// early. Bounded: fails after 10 s.
    pub fn detach_and_wait(self) {
        use overlay_init::uevent::Action;
        let mut socket = UeventSocket::open().expect("uevent socket");
        let name = self.name().to_string();
        let backing_file = format!("/sys/block/{name}/loop/backing_file");
        let suffix = format!("/{name}");
        drop(self);
        let detached = receive_uevents_until(&mut socket, |received| match received {
            Received::Event(event) => {
                event.action == Some(Action::Change)
                    && event.devpath.ends_with(&suffix)
                    && !Path::new(&backing_file).exists()
            }
            // Events were lost: the device's state in sysfs decides.
            Received::Overflow => !Path::new(&backing_file).exists(),
            Received::Timeout => false,
        });
        assert!(detached, "no detach uevent for {name} within 10 s");
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Unmount the test's mounts first: a loop device still in use is only
        // marked for autoclear, and the kernel frees it later, asynchronously.
        if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
            drop(UnmountAllUnder(PathBuf::from(dir)));
        }
        let status = Command::new("losetup")
            .arg("--detach")
            .arg(&self.dev)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not detach {}: {status:?}", self.dev.display());
        }
    }
}

/// Loop devices bound to a file under `dir`, as `(/dev/loopN, file)`.
pub fn loop_devices_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    loopdev::attached_loop_devices()
        .expect("listing loop devices")
        .into_iter()
        .filter(|(_, file)| file.starts_with(dir))
        .collect()
}

/// Fail if a loop device is still bound to a file under `dir`. The kernel
/// detaches a loop device at its last close: after a detach while another
/// process has it open (udev, blkid, another test's coldplug probing every
/// block device), and for an auto-clearing one asynchronously after its last user
/// (an overlay's private mount clones are released from a work queue), so this
/// waits for the kernel's uevents about those devices, up to a bound.
pub fn assert_no_loop_device_under(dir: &Path) {
    let mut socket = UeventSocket::open().expect("uevent socket");
    let mut left = loop_devices_under(dir);
    if left.is_empty() {
        return;
    }
    // Any event, an overflow or the bound triggers a re-check.
    receive_uevents_until(&mut socket, |_| {
        left = loop_devices_under(dir);
        left.is_empty()
    });
    assert!(left.is_empty(), "loop devices left behind: {left:?}");
}

/// Receive the kernel's uevents on `socket`, each (or an overflow, or the
/// bound's timeout) shown to `done`, until it says so: `true`; `false` once
/// 10 s have passed without.
fn receive_uevents_until(
    socket: &mut UeventSocket,
    mut done: impl FnMut(&Received) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let received = socket
            .receive(Some(deadline - now))
            .expect("receive uevent");
        if done(&received) {
            return true;
        }
    }
}
