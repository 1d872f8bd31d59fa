//! What every test uses: the repository's paths, [`run`] for a command that must succeed,
//! per-test [`Scratch`] space removed on drop, small trees and unique names.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::SystemTime;

/// The repository: two levels above this crate (`tests/support`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support is two levels below the repository")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target"))
}

/// Where test artifacts and scratch files live: `target/qemu-test`.
pub fn work_dir() -> PathBuf {
    target_dir().join("qemu-test")
}

/// Runs a command that must succeed (stdin empty); panics with its output otherwise. Returns
/// stdout without leading and trailing white space.
pub fn run(command: &mut Command) -> String {
    let description = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {description}: {error}"));
    assert!(
        output.status.success(),
        "{description} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Scratch space

/// A directory for one test's files under `target/qemu-test/scratch`, removed on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = work_dir()
            .join("scratch")
            .join(format!("{name}-{}-{unique}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Copies a disk image into the scratch directory (sparse, reflinked where possible), so a
/// test can boot and modify it.
pub fn fresh_copy(image: &Path, scratch: &Scratch, name: &str) -> PathBuf {
    let copy = scratch.join(name);
    run(Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(image)
        .arg(&copy));
    copy
}

/// Copies a directory tree (e.g. the demo root) so a test can change it before making an image.
pub fn copy_tree(source: &Path, destination: &Path) {
    run(Command::new("cp").arg("-a").arg(source).arg(destination));
}

/// Writes a file, creating its parent directories.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Write `files` (path relative to `root`, content) into a fresh directory tree.
pub fn tree(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
    }
}

/// A number no other run or call of this process shares.
pub fn unique_number() -> u64 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (u64::from(std::process::id()) << 32)
        ^ (nanos << 8)
        ^ u64::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// An ext4 label (at most 16 bytes) unique to this run: block devices are
/// global, and other tests' and the host's must never match.
pub fn unique_label(prefix: &str) -> String {
    let label = format!("{prefix}{:x}", unique_number() & 0xff_ffff_ffff);
    label[..label.len().min(16)].to_string()
}

/// A version-4-shaped UUID unique to this run.
pub fn unique_uuid() -> String {
    let n = unique_number();
    let m = n.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n >> 32,
        (n >> 16) & 0xffff,
        n & 0xfff,
        m & 0xfff,
        (m >> 12) & 0xffff_ffff_ffff
    )
}
