//! Loop-device tests against the real kernel: attach image files made at test
//! time with mksquashfs / mkfs.ext4, mount them, detach, and check that no loop
//! device is left behind — also when a step fails midway.
//!
//! Needs root and the loop, squashfs and ext4 drivers. Each test re-runs
//! itself (`--exact NAME`) under `unshare --mount --propagation private`, so
//! its mounts live in a private mount namespace that dies with the child and
//! never reach the host. Loop devices are global: guards detach them, and both
//! the child and the parent check that none bound to the test's files remains.
//!
//! Run: `cargo test --test netns_loop`

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use overlay_init::fstype::FsType;
use overlay_init::probe::superblock::{self, PROBE_BYTES};
use overlay_init::sys::loopdev::{self, AttachOptions, LoopDevice};
use rustix::mount::{MountFlags, UnmountFlags};

/// Set in the re-executed child: the name of the test to run for real, and
/// the scratch directory the parent made for it.
const CHILD_TEST_ENV: &str = "OVERLAY_INIT_NETNS_LOOP_TEST";
const CHILD_DIR_ENV: &str = "OVERLAY_INIT_NETNS_LOOP_DIR";

/// Run `body` in a child process in a private mount namespace, with a fresh
/// scratch directory. In the child this just runs `body`.
fn in_private_mount_namespace(test_name: &str, body: impl FnOnce(&Path)) {
    if std::env::var(CHILD_TEST_ENV).as_deref() == Ok(test_name) {
        let dir = PathBuf::from(std::env::var_os(CHILD_DIR_ENV).expect("scratch dir is set"));
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

/// A directory under /tmp removed (with everything in it) on drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(test_name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "overlay-init-netns-loop-{}-{test_name}",
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

/// A read-only mount, unmounted on drop.
struct Mounted {
    target: PathBuf,
}

impl Mounted {
    fn read_only(source: &Path, target: &Path, fstype: &str) -> rustix::io::Result<Self> {
        fs::create_dir_all(target).expect("creating mount point");
        rustix::mount::mount(
            source,
            target,
            fstype,
            MountFlags::RDONLY,
            None::<&std::ffi::CStr>,
        )?;
        Ok(Mounted {
            target: target.to_owned(),
        })
    }

    fn unmount(mut self) {
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

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A tree with one known file, the content every image carries.
fn make_tree(dir: &Path, marker: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{marker}"));
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/marker"), format!("{marker}\n")).unwrap();
    tree
}

fn make_squashfs(dir: &Path, marker: &str) -> PathBuf {
    let tree = make_tree(dir, marker);
    let image = dir.join(format!("{marker}.sqsh"));
    run(Command::new("mksquashfs").arg(&tree).arg(&image).args([
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
    image
}

fn make_ext4(dir: &Path, marker: &str, tree: &Path) -> PathBuf {
    let image = dir.join(format!("{marker}.ext4"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", marker, "-d"])
        .arg(tree)
        .arg(&image)
        .arg("16M"));
    image
}

/// Loop devices bound to a file under `dir` (paths as this namespace sees them).
fn loop_devices_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    loopdev::attached_loop_devices()
        .expect("listing loop devices")
        .into_iter()
        .filter(|(_, file)| file.starts_with(dir))
        .collect()
}

fn assert_no_loop_device_under(dir: &Path) {
    let left = loop_devices_under(dir);
    assert!(left.is_empty(), "loop devices left behind: {left:?}");
}

fn sysfs_read_only(device: &LoopDevice) -> bool {
    let ro = fs::read_to_string(format!("/sys/block/loop{}/ro", device.number())).unwrap();
    ro.trim() == "1"
}

/// The filesystem on a device, as the boot path detects it.
fn detect_fstype(device: &Path) -> FsType {
    let mut head = Vec::new();
    fs::File::open(device)
        .unwrap()
        .take(PROBE_BYTES as u64)
        .read_to_end(&mut head)
        .unwrap();
    superblock::detect(&head)
        .expect("valid superblock")
        .and_then(|info| info.fstype())
        .unwrap_or_else(|| panic!("no supported filesystem on {}", device.display()))
}

/// Attach, check read-only, detect, mount, read the marker, unmount, detach.
fn attach_mount_read_detach(image: &Path, fstype: FsType, marker: &str, mountpoint: &Path) {
    let device = loopdev::attach_image(image).expect("attaching image");
    assert_eq!(
        loopdev::backing_file(device.path()).as_deref(),
        Some(image),
        "sysfs names the image as the backing file of {}",
        device.path().display()
    );
    assert!(device.is_read_only().unwrap(), "BLKROGET says read-only");
    assert!(
        sysfs_read_only(&device),
        "/sys/block/loopN/ro says read-only"
    );

    assert_eq!(detect_fstype(device.path()), fstype);
    let mounted =
        Mounted::read_only(device.path(), mountpoint, fstype.kernel_name()).expect("mounting");
    assert_eq!(
        fs::read_to_string(mountpoint.join("etc/marker")).unwrap(),
        format!("{marker}\n")
    );
    assert!(
        fs::write(mountpoint.join("etc/new"), "x").is_err(),
        "the mount is read-only"
    );
    mounted.unmount();
    device.detach().expect("detaching");
    let left: Vec<_> = loopdev::attached_loop_devices()
        .unwrap()
        .into_iter()
        .filter(|(_, file)| file == image)
        .collect();
    assert!(
        left.is_empty(),
        "{} still attached: {left:?}",
        image.display()
    );
}

#[test]
fn squashfs_image_attaches_read_only_and_detaches() {
    in_private_mount_namespace("squashfs_image_attaches_read_only_and_detaches", |dir| {
        let image = make_squashfs(dir, "squash");
        attach_mount_read_detach(&image, FsType::Squashfs, "squash", &dir.join("mnt"));
    });
}

#[test]
fn ext4_image_attaches_read_only_and_detaches() {
    in_private_mount_namespace("ext4_image_attaches_read_only_and_detaches", |dir| {
        let tree = make_tree(dir, "extfour");
        let image = make_ext4(dir, "extfour", &tree);
        attach_mount_read_detach(&image, FsType::Ext4, "extfour", &dir.join("mnt"));
    });
}

#[test]
fn failed_mount_leaves_no_loop_device() {
    in_private_mount_namespace("failed_mount_leaves_no_loop_device", |dir| {
        // Not a filesystem: one MiB of a repeating pattern.
        let junk = dir.join("junk.img");
        fs::write(&junk, b"not a filesystem ".repeat(64 * 1024)).unwrap();
        let result = (|| -> anyhow::Result<()> {
            let device = loopdev::attach_image(&junk)?;
            assert_eq!(loop_devices_under(dir).len(), 1, "attached while in use");
            Mounted::read_only(device.path(), &dir.join("mnt"), "squashfs")?;
            device.keep();
            Ok(())
        })();
        let err = result.expect_err("mounting junk as squashfs must fail");
        assert!(err.to_string().contains("Invalid argument"), "{err:#}");
        assert_no_loop_device_under(dir);
    });
}

#[test]
fn bad_image_paths_are_reported_by_name() {
    in_private_mount_namespace("bad_image_paths_are_reported_by_name", |dir| {
        let missing = dir.join("missing.sqsh");
        let err = loopdev::attach_image(&missing).unwrap_err();
        assert!(format!("{err:#}").contains("missing.sqsh"), "{err:#}");

        let empty = dir.join("empty.sqsh");
        fs::write(&empty, b"").unwrap();
        let err = loopdev::attach_image(&empty).unwrap_err();
        assert!(
            format!("{err:#}").contains("empty.sqsh is empty"),
            "{err:#}"
        );

        let err = loopdev::attach_image(dir).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        assert_no_loop_device_under(dir);
    });
}

#[test]
fn kept_device_lives_until_its_mount_goes() {
    in_private_mount_namespace("kept_device_lives_until_its_mount_goes", |dir| {
        let image = make_squashfs(dir, "kept");
        let device = loopdev::attach_image(&image).unwrap();
        let device_path = device.path().to_owned();
        let mounted = Mounted::read_only(&device_path, &dir.join("mnt"), "squashfs").unwrap();
        device.keep();
        // Our handle is closed; the mount alone holds the device.
        assert_eq!(
            loopdev::backing_file(&device_path).as_deref(),
            Some(&*image)
        );
        assert_eq!(
            fs::read_to_string(dir.join("mnt/etc/marker")).unwrap(),
            "kept\n"
        );
        mounted.unmount();
        // Autoclear: the kernel detached it when the mount went.
        assert_eq!(loopdev::backing_file(&device_path), None);
    });
}

/// The `ovl.image=` case: the image sits on a filesystem mounted read-only
/// (itself a loop-mounted ext4 here), so it can only be opened read-only.
#[test]
fn image_on_read_only_filesystem_attaches() {
    in_private_mount_namespace("image_on_read_only_filesystem_attaches", |dir| {
        let squashfs = make_squashfs(dir, "inner");
        let outer_tree = dir.join("outer-tree");
        fs::create_dir_all(outer_tree.join("images")).unwrap();
        fs::rename(&squashfs, outer_tree.join("images/root.sqsh")).unwrap();
        let outer_image = make_ext4(dir, "outer", &outer_tree);

        let outer_device = loopdev::attach_image(&outer_image).unwrap();
        let outer_mount = dir.join("outer");
        let outer = Mounted::read_only(outer_device.path(), &outer_mount, "ext4").unwrap();
        let inner_image = outer_mount.join("images/root.sqsh");
        assert!(
            fs::OpenOptions::new()
                .write(true)
                .open(&inner_image)
                .is_err(),
            "the image's filesystem is read-only"
        );

        attach_mount_read_detach(&inner_image, FsType::Squashfs, "inner", &dir.join("mnt"));

        outer.unmount();
        outer_device.detach().unwrap();
        assert_no_loop_device_under(dir);
    });
}

#[test]
fn direct_io_request_attaches_and_can_be_declined() {
    in_private_mount_namespace("direct_io_request_attaches_and_can_be_declined", |dir| {
        let image = make_squashfs(dir, "dio");
        let buffered =
            LoopDevice::attach_read_only(&image, AttachOptions { direct_io: false }).unwrap();
        assert!(!buffered.direct_io(), "direct I/O was not asked for");
        // The backing file sits on ext4 here, which supports O_DIRECT.
        let direct =
            LoopDevice::attach_read_only(&image, AttachOptions { direct_io: true }).unwrap();
        assert!(direct.direct_io(), "direct I/O on an ext4-backed image");
        assert_ne!(buffered.number(), direct.number());
        assert_eq!(loop_devices_under(dir).len(), 2);
        drop(buffered);
        drop(direct);
        assert_no_loop_device_under(dir);
    });
}
