//! Shared harness for mount-namespace tests: run a test body in a child process
//! inside a private mount namespace (`unshare --mount --propagation private`),
//! with a scratch directory and loop devices that are always cleaned up.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD_TEST_ENV: &str = "OVERLAY_INIT_NETNS_TEST";
const CHILD_DIR_ENV: &str = "OVERLAY_INIT_NETNS_DIR";

/// Run `body` in a private mount namespace with a fresh scratch directory.
/// In the parent this re-executes the test binary for `test_name` only; in the
/// child it runs `body`. Mounts die with the child's namespace.
pub fn in_private_mount_namespace(test_name: &str, body: impl FnOnce(&Path)) {
    if std::env::var(CHILD_TEST_ENV).as_deref() == Ok(test_name) {
        let dir = PathBuf::from(std::env::var_os(CHILD_DIR_ENV).expect("scratch dir is set"));
        // Declared first so it drops last, after the body's loop guards: unmounting
        // then frees the (auto-clearing) loop devices before the parent checks.
        let _unmount = UnmountAllUnder(dir.clone());
        body(&dir);
        return;
    }
    let scratch = ScratchDir::new(test_name);
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_TEST_ENV, test_name)
        .env(CHILD_DIR_ENV, &scratch.path)
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
    assert_no_loop_device_under(&scratch.path);
}

/// Unmounts every mount below a directory, deepest first, on drop.
pub struct UnmountAllUnder(pub PathBuf);

impl Drop for UnmountAllUnder {
    fn drop(&mut self) {
        let prefix = self.0.to_string_lossy().into_owned();
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.reverse();
        for p in points {
            let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::empty());
        }
    }
}

/// A directory under /tmp removed, with everything in it, on drop.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn new(test_name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "overlay-init-test-{}-{test_name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("creating scratch dir");
        ScratchDir { path }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A loop device made with `losetup`, detached on drop.
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
        let out = cmd.arg(file).output().expect("losetup");
        assert!(
            out.status.success(),
            "losetup {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Unmount the test's mounts first: a loop device still in use is only
        // marked for autoclear, and the kernel frees it later, asynchronously.
        if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
            drop(UnmountAllUnder(PathBuf::from(dir)));
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Loop devices (`NAME BACK-FILE` lines) bound to a file under `dir`.
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .expect("losetup --list");
    let dir = dir.to_string_lossy();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*dir))
        .map(str::to_string)
        .collect()
}

/// Fail if a loop device is still bound to a file under `dir`. The kernel
/// detaches an auto-clearing loop device asynchronously after its last user
/// (an overlay's private mount clones are released from a work queue), so this
/// waits for the kernel's uevents about those devices, up to a bound.
pub fn assert_no_loop_device_under(dir: &Path) {
    use overlay_init::sys::uevent::{Received, UeventSocket};
    let mut socket = UeventSocket::open().expect("uevent socket");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = loop_devices_under(dir);
        if left.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        assert!(now < deadline, "loop devices left behind: {left:?}");
        // Any event (or the bound) triggers a re-check.
        match socket
            .receive(Some(deadline - now))
            .expect("receive uevent")
        {
            Received::Event(_) | Received::Timeout | Received::Overflow => {}
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

/// Run a command and panic with its output if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A squashfs image of `dir`.
pub fn mksquashfs(dir: &Path, image: &Path) {
    run(Command::new("mksquashfs").arg(dir).arg(image).args([
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
}

/// An ext4 image of `size_mib` MiB, filled from `dir` when given.
pub fn mkext4(image: &Path, size_mib: u64, label: &str, dir: Option<&Path>) {
    let f = fs::File::create(image).expect("create image");
    f.set_len(size_mib << 20).expect("size image");
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", label]);
    if let Some(dir) = dir {
        cmd.arg("-d").arg(dir);
    }
    run(cmd.arg(image));
}

/// Write `files` (path relative to `root`, content) into a fresh directory tree.
pub fn tree(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
    }
}
