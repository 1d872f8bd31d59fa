//! Finding block devices against the real kernel: loop devices made at test
//! time from images built with mkfs.ext4 -L/-U, sgdisk and sfdisk, found by
//! the coldplug walk and through kernel uevents.
//!
//! Needs root and the loop driver. Nothing is mounted, so no mount namespace is
//! needed; loop devices are global, so every one is detached by a guard, also
//! when an assertion fails. The host has block devices of its own (vda, other
//! engineers' loop devices): every label, UUID and PARTUUID here is made unique
//! per run, and no assertion depends on devices the test did not make.
//!
//! Partitions: `losetup -P` asks the kernel to scan the table; a kernel built
//! without partition parsers (this host's) finds none, so the test adds the
//! partitions the table describes with BLKPG (`addpart`), the way `partx` does.
//! Either way the kernel's uevent carries no PARTUUID, and on the BLKPG path no
//! PARTNAME either: both must come from our own reading of the table.
//!
//! Run: `cargo test --test netns devices::`

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    is_namespace_child, rerun_in_private_mount_namespace, run, unique_label, unique_number,
    unique_uuid, Ext4, Loop, Scratch,
};
use overlay_init::devspec::DeviceSpec;
use overlay_init::fstype::FsType;
use overlay_init::sys::blockdev::DeviceWaiter;

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

/// A plain (unpartitioned) 8 MiB ext4 image.
fn ext4_image(path: &Path, label: &str, uuid: &str) {
    Ext4::mib(8).label(label).uuid(uuid).write_to(path);
}

/// An empty image file of `size_mib` MiB, for a partition table to go on.
fn disk_image(path: &Path, size_mib: u64) {
    fs::File::create(path)
        .and_then(|f| f.set_len(size_mib * MIB))
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
}

/// A GPT disk image: partition 1 (sectors 2048.., 8 MiB) holds ext4, partition 2
/// (8 MiB after it) holds no filesystem.
struct GptImage {
    label: String,
    uuid: String,
    partlabel1: String,
    partlabel2: String,
    partuuid1: String,
    partuuid2: String,
}

const GPT_PARTITIONS: [(u32, u64, u64); 2] = [
    (1, 2048, 8 * MIB / SECTOR),
    (2, 2048 + 8 * MIB / SECTOR, 8 * MIB / SECTOR),
];

fn gpt_image(path: &Path) -> GptImage {
    let img = GptImage {
        label: unique_label("gpt"),
        uuid: unique_uuid(),
        partlabel1: unique_label("root"),
        partlabel2: unique_label("data"),
        partuuid1: unique_uuid(),
        partuuid2: unique_uuid(),
    };
    disk_image(path, 24);
    // The filesystem first: mke2fs clears the start of the file whatever the offset.
    Ext4::mib(8)
        .label(&img.label)
        .uuid(&img.uuid)
        .at_offset(GPT_PARTITIONS[0].1 * SECTOR)
        .write_to(path);
    let [(n1, s1, len1), (n2, s2, len2)] = GPT_PARTITIONS;
    run(Command::new("sgdisk")
        .arg(format!("--new={n1}:{s1}:{}", s1 + len1 - 1))
        .arg(format!("--change-name={n1}:{}", img.partlabel1))
        .arg(format!("--partition-guid={n1}:{}", img.partuuid1))
        .arg(format!("--new={n2}:{s2}:{}", s2 + len2 - 1))
        .arg(format!("--change-name={n2}:{}", img.partlabel2))
        .arg(format!("--partition-guid={n2}:{}", img.partuuid2))
        .arg(path));
    img
}

fn spec(s: &str) -> DeviceSpec {
    DeviceSpec::parse(s).unwrap()
}

/// Devices present before the waiter starts are found by the coldplug walk
/// alone: the deadline is "now", so nothing can arrive by uevent in time.
#[test]
fn coldplug_finds_loop_devices_by_label_uuid_partlabel_partuuid() {
    let scratch = Scratch::new("devices-coldplug");

    let gpt_path = scratch.join("gpt.img");
    let gpt = gpt_image(&gpt_path);
    let gpt_loop = Loop::attach_partitioned(&gpt_path, &GPT_PARTITIONS);

    // An MBR disk: PARTUUID is the disk signature and the partition number.
    let mbr_path = scratch.join("mbr.img");
    let signature = format!("{:08x}", (unique_number() as u32) | 1);
    let mbr_label = unique_label("mbr");
    let mbr_uuid = unique_uuid();
    disk_image(&mbr_path, 16);
    Ext4::mib(8)
        .label(&mbr_label)
        .uuid(&mbr_uuid)
        .at_offset(MIB)
        .write_to(&mbr_path);
    let sfdisk_script =
        format!("label: dos\nlabel-id: 0x{signature}\nstart=2048, size=16384, type=83\n");
    let mut sfdisk = Command::new("sfdisk")
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe-partitions",
            "never",
        ])
        .arg(&mbr_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(sfdisk_script.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let mbr_loop = Loop::attach_partitioned(&mbr_path, &[(1, 2048, 16384)]);

    // A whole-disk filesystem.
    let plain_path = scratch.join("plain.img");
    let plain_label = unique_label("plain");
    let plain_uuid = unique_uuid();
    ext4_image(&plain_path, &plain_label, &plain_uuid);
    let plain_loop = Loop::attach(&plain_path, false);

    let mut waiter = DeviceWaiter::new().expect("open uevent socket and walk /sys/class/block");
    let specs = [
        spec(&format!("LABEL={}", gpt.label)),
        spec(&format!("UUID={}", gpt.uuid.to_uppercase())),
        spec(&format!("PARTLABEL={}", gpt.partlabel1)),
        spec(&format!("PARTUUID={}", gpt.partuuid1)),
        spec(&format!("PARTLABEL={}", gpt.partlabel2)),
        spec(&format!("PARTUUID={}", gpt.partuuid2)),
        spec(&format!("PARTUUID={signature}-01")),
        spec(&format!("LABEL={mbr_label}")),
        spec(&format!("UUID={plain_uuid}")),
        spec(plain_loop.dev_str()),
    ];
    let spec_refs: Vec<&DeviceSpec> = specs.iter().collect();
    let found = waiter
        .wait_for(&spec_refs, Some(Instant::now()), |_| {})
        .unwrap_or_else(|e| panic!("{e:#}"));

    let paths: Vec<&Path> = found.iter().map(|r| r.dev_path.as_path()).collect();
    let gpt1 = gpt_loop.partition(1);
    let gpt2 = gpt_loop.partition(2);
    let mbr1 = mbr_loop.partition(1);
    let plain = plain_loop.dev.clone();
    assert_eq!(
        paths,
        [&gpt1, &gpt1, &gpt1, &gpt1, &gpt2, &gpt2, &mbr1, &mbr1, &plain, &plain]
            .map(|p| p.as_path())
    );
    for (resolved, spec) in found.iter().zip(&specs) {
        assert_eq!(&resolved.spec, spec);
    }

    let root = &found[0].info;
    assert_eq!(
        root.filesystem.as_ref().and_then(|f| f.fstype()),
        Some(FsType::Ext4)
    );
    assert_eq!(root.uuid(), Some(gpt.uuid.as_str()));
    assert_eq!(root.partlabel(), Some(gpt.partlabel1.as_str()));
    assert_eq!(root.partuuid(), Some(gpt.partuuid1.as_str()));
    let part = root.partition.as_ref().unwrap();
    assert_eq!((part.number, part.disk.as_str()), (1, gpt_loop.name()));
    assert_eq!(root.size_bytes, 8 * MIB);

    // Partition 2 holds no filesystem: found by its table entry alone.
    let data = &found[4].info;
    assert_eq!(data.filesystem, None);
    assert_eq!(data.probe_error, None);

    // seen() lists the whole disks too.
    assert!(waiter
        .seen()
        .iter()
        .any(|d| d.name == gpt_loop.name() && d.partition.is_none()));
}

/// A device attached after `DeviceWaiter::new()` is found through its uevents:
/// the disk's `change` (media appeared) and the partition's `add`.
#[test]
fn a_device_attached_after_the_waiter_starts_is_found_through_its_uevent() {
    let scratch = Scratch::new("devices-hotplug");
    let gpt_path = scratch.join("gpt.img");
    let gpt = gpt_image(&gpt_path);
    let plain_path = scratch.join("plain.img");
    let plain_label = unique_label("late");
    ext4_image(&plain_path, &plain_label, &unique_uuid());

    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (loops_tx, loops_rx) = mpsc::channel::<Vec<Loop>>();
    let attacher = thread::spawn(move || {
        if go_rx.recv().is_err() {
            return;
        }
        let loops = vec![
            Loop::attach(&plain_path, false),
            Loop::attach_partitioned(&gpt_path, &GPT_PARTITIONS),
        ];
        // If the receiver is gone the loops come back in the error and drop here.
        let _ = loops_tx.send(loops);
    });

    let mut waiter = DeviceWaiter::new().expect("open uevent socket and walk /sys/class/block");
    let late = spec(&format!("LABEL={plain_label}"));
    let part = spec(&format!("PARTLABEL={}", gpt.partlabel2));
    let part_uuid = spec(&format!("PARTUUID={}", gpt.partuuid1));
    for s in [&late, &part, &part_uuid] {
        assert!(
            waiter.seen().iter().all(|d| !d.matches(s)),
            "{s} must not exist before the attach"
        );
    }
    go_tx.send(()).unwrap();

    let result = waiter.wait_for(
        &[&late, &part, &part_uuid],
        Some(Instant::now() + Duration::from_secs(30)),
        |_| {},
    );
    // Take the guards before judging, so the loops are detached whatever happens.
    let loops = loops_rx
        .recv()
        .expect("the attacher thread attached the loop devices");
    attacher.join().unwrap();
    let found = result.unwrap_or_else(|e| panic!("{e:#}"));

    assert_eq!(found[0].dev_path, loops[0].dev);
    assert_eq!(found[0].info.label(), Some(plain_label.as_str()));
    assert_eq!(found[1].dev_path, loops[1].partition(2));
    assert_eq!(found[2].dev_path, loops[1].partition(1));
    assert_eq!(found[2].info.label(), Some(gpt.label.as_str()));
}

/// A spec nobody satisfies fails at the deadline, and the message lists the
/// devices that were seen with their labels and UUIDs.
#[test]
fn a_missing_label_fails_at_the_deadline_listing_the_devices_seen() {
    let scratch = Scratch::new("devices-missing");
    let path = scratch.join("present.img");
    let label = unique_label("here");
    let uuid = unique_uuid();
    ext4_image(&path, &label, &uuid);
    let present = Loop::attach(&path, false);

    let mut waiter = DeviceWaiter::new().unwrap();
    let missing = spec(&format!("LABEL={}", unique_label("absent")));
    let started = Instant::now();
    let err = waiter
        .wait_for(
            &[&missing],
            Some(started + Duration::from_millis(300)),
            |_| {},
        )
        .expect_err("nothing carries that label");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "returned early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "overslept: {waited:?}");

    let msg = format!("{err:#}");
    assert!(
        msg.starts_with(&format!("no block device matches {missing} after waiting")),
        "{msg}"
    );
    let line = format!(
        "\n  {} (8.0 MiB): ext4 LABEL=\"{label}\" UUID={uuid}",
        present.dev.display()
    );
    assert!(msg.contains(&line), "{line:?} not in:\n{msg}");
}

/// Two devices with one label: an error naming both, at once.
#[test]
fn two_devices_with_one_label_are_an_error_naming_both() {
    let scratch = Scratch::new("devices-twins");
    let label = unique_label("twin");
    let (a, b) = (scratch.join("a.img"), scratch.join("b.img"));
    ext4_image(&a, &label, &unique_uuid());
    ext4_image(&b, &label, &unique_uuid());
    let loop_a = Loop::attach(&a, false);
    let loop_b = Loop::attach(&b, false);

    let mut waiter = DeviceWaiter::new().unwrap();
    let twin = spec(&format!("LABEL={label}"));
    let started = Instant::now();
    let err = waiter
        .wait_for(&[&twin], None, |_| {})
        .expect_err("two devices carry the label");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ambiguity must not wait"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with(&format!("{twin} matches 2 devices")),
        "{msg}"
    );
    assert!(
        msg.contains(loop_a.dev_str()) && msg.contains(loop_b.dev_str()),
        "{msg}"
    );
}

/// A device detached after the coldplug is forgotten: its `change` uevent
/// (size 0) is applied before the waiter judges.
#[test]
fn a_detached_device_is_forgotten() {
    let scratch = Scratch::new("devices-detach");
    let path = scratch.join("gone.img");
    let label = unique_label("gone");
    ext4_image(&path, &label, &unique_uuid());
    let gone = Loop::attach(&path, false);

    let mut waiter = DeviceWaiter::new().unwrap();
    let by_label = spec(&format!("LABEL={label}"));
    assert!(waiter.seen().iter().any(|d| d.matches(&by_label)));
    // The waiter's socket holds the detach's uevent once this returns.
    gone.detach_and_wait();

    let err = waiter
        .wait_for(&[&by_label], Some(Instant::now()), |_| {})
        .expect_err("the device was detached");
    assert!(
        format!("{err:#}").starts_with("no block device matches"),
        "{err:#}"
    );
    assert!(waiter.seen().iter().all(|d| !d.matches(&by_label)));
}

/// A uevent sent by a userspace process (root may multicast to the kernel's
/// group) is dropped: only the kernel's own messages, from port 0, get through.
/// The forged message is sent first and a real kernel event (a loop attach)
/// after it, so a socket that let it through would return it first.
#[test]
fn a_forged_uevent_from_userspace_is_dropped() {
    use overlay_init::sys::uevent::{Received, UeventSocket};
    use rustix::net::netlink::{self, SocketAddrNetlink};
    use rustix::net::{sendto, socket_with, AddressFamily, SendFlags, SocketFlags, SocketType};

    let scratch = Scratch::new("devices-forged");
    let path = scratch.join("real.img");
    ext4_image(&path, &unique_label("real"), &unique_uuid());

    let mut socket = UeventSocket::open().unwrap();
    let forged_devpath = format!("/devices/virtual/block/forged{:x}", unique_number());
    let forged = format!(
        "add@{forged_devpath}\0ACTION=add\0DEVPATH={forged_devpath}\0SUBSYSTEM=block\0DEVNAME=forged\0MAJOR=7\0MINOR=200\0"
    );
    let sender = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::KOBJECT_UEVENT),
    )
    .unwrap();
    let sent = sendto(
        &sender,
        forged.as_bytes(),
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 1),
    )
    .expect("root may send to the uevent multicast group");
    assert_eq!(sent, forged.len());

    let real = Loop::attach(&path, false);
    let real_devpath_end = format!("/{}", real.name());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match socket.receive(Some(left)).unwrap() {
            Received::Event(event) => {
                assert_ne!(
                    event.devpath, forged_devpath,
                    "the forged uevent got through"
                );
                if event.devpath.ends_with(&real_devpath_end) {
                    break;
                }
            }
            Received::Overflow => {}
            Received::Timeout => panic!("no uevent for {} within 30s", real.dev.display()),
        }
    }
}

/// `rootwait` without a limit: the waiter reports what it still waits for at
/// every interval, and returns as soon as the device appears. The device is
/// attached only after the first report, so the wait demonstrably went on past
/// it.
#[test]
fn an_unbounded_wait_reports_progress_until_the_device_appears() {
    let scratch = Scratch::new("devices-rootwait");
    let path = scratch.join("slow.img");
    let label = unique_label("slow");
    ext4_image(&path, &label, &unique_uuid());

    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (loop_tx, loop_rx) = mpsc::channel::<Loop>();
    let attacher = thread::spawn(move || {
        // Without a report the device is attached anyway, so a broken report
        // fails the `reports >= 1` check below instead of hanging the test.
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
        let _ = loop_tx.send(Loop::attach(&path, false));
    });

    let mut waiter = DeviceWaiter::new().unwrap();
    waiter.set_progress_interval(Duration::from_millis(20));
    let slow = spec(&format!("LABEL={label}"));
    let mut reports = 0;
    let result = waiter.wait_for(&[&slow], None, |progress| {
        reports += 1;
        assert_eq!(progress.missing, [&slow]);
        if reports == 1 {
            go_tx.send(()).unwrap();
        }
        // A bound for the test only, so a lost uevent fails instead of hanging.
        assert!(
            progress.waited < Duration::from_secs(30),
            "device never seen"
        );
    });
    drop(go_tx);
    let attached = loop_rx
        .recv()
        .expect("the attacher thread attached the loop device");
    attacher.join().unwrap();
    let found = result.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(reports >= 1);
    assert_eq!(found[0].dev_path, attached.dev);
}

const CHILD_LABEL_ENV: &str = "OVERLAY_INIT_NETNS_DEVICES_LABEL";
const CHILD_DEV_ENV: &str = "OVERLAY_INIT_NETNS_DEVICES_DEV";

/// Without devtmpfs on /dev (a kernel without CONFIG_DEVTMPFS, a hand-made
/// /dev), the waiter makes the nodes itself from MAJOR:MINOR. The test re-runs
/// itself under `unshare --mount --propagation private` and hides the host's
/// /dev under an empty tmpfs there; the loop device is attached (and detached)
/// by the parent.
#[test]
fn without_devtmpfs_the_node_is_made_with_mknod() {
    const NAME: &str = "without_devtmpfs_the_node_is_made_with_mknod";
    if is_namespace_child(NAME) {
        let label = std::env::var(CHILD_LABEL_ENV).unwrap();
        let dev = std::env::var(CHILD_DEV_ENV).unwrap();
        rustix::mount::mount(
            "tmpfs",
            "/dev",
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .expect("mount an empty tmpfs on /dev");
        assert!(!Path::new(&dev).exists());
        let mut waiter = DeviceWaiter::new().unwrap();
        let found = waiter
            .wait_for(
                &[&spec(&format!("LABEL={label}"))],
                Some(Instant::now()),
                |_| {},
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(found[0].dev_path, PathBuf::from(&dev));
        let st = rustix::fs::stat(&dev).expect("the node was made");
        assert_eq!(
            rustix::fs::FileType::from_raw_mode(st.st_mode),
            rustix::fs::FileType::BlockDevice
        );
        assert_eq!(
            st.st_rdev,
            rustix::fs::makedev(found[0].info.major, found[0].info.minor)
        );
        return;
    }

    let scratch = Scratch::new("devices-mknod");
    let path = scratch.join("nodev.img");
    let label = unique_label("nodev");
    ext4_image(&path, &label, &unique_uuid());
    let attached = Loop::attach(&path, false);
    rerun_in_private_mount_namespace(
        NAME,
        &[
            (CHILD_LABEL_ENV, OsStr::new(&label)),
            (CHILD_DEV_ENV, attached.dev.as_os_str()),
        ],
    );
}
