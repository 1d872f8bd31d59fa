//! Finding devices by name in a real boot (QEMU, Debian's kernel, overlay-init as /init):
//! a GPT disk found by PARTLABEL/LABEL and by PARTUUID/UUID with the overlay kept across
//! boots, an upper disk attached while the init waits for it, and a missing LABEL that ends
//! in the failure path after `ovl.timeout` with the list of devices seen.
//!
//! Run: `cargo test --test qemu devices::` (about a minute under TCG).

use crate::support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT_PARTLABEL: &str = "rootfs";
const DATA_PARTLABEL: &str = "rootfs_data";
const DATA_LABEL: &str = "rootfs_data";
const ROOT_PARTUUID: &str = "6a1f0c2e-8b4d-4e7a-9c3b-1d2e3f405162";
const DATA_PARTUUID: &str = "7b2e1d3f-9c5e-4f8b-8d4c-2e3f40516273";
const DATA_UUID: &str = "5d0e7a4c-3b2f-4c1d-9e8f-0a1b2c3d4e5f";

/// A disk as an OpenWrt-style image lays it out: partition 1 the squashfs root
/// (PARTLABEL `rootfs`), partition 2 an empty ext4 (LABEL and PARTLABEL `rootfs_data`),
/// both with fixed PARTUUIDs and the ext4 with a fixed UUID.
struct GptDisk {
    path: PathBuf,
    data: Extent,
}

fn gpt_disk(scratch: &Scratch) -> GptDisk {
    gpt_disk_for(Arch::X86_64, scratch)
}

/// [`gpt_disk`] with the demo root of `arch`.
fn gpt_disk_for(arch: Arch, scratch: &Scratch) -> GptDisk {
    let artifacts = artifacts_for(arch);
    let data_image = scratch.join("data.ext4");
    make_ext4(&data_image, 32, None, &["-L", DATA_LABEL, "-U", DATA_UUID]);
    let root_mib = std::fs::metadata(&artifacts.root_sqsh)
        .unwrap()
        .len()
        .div_ceil(1 << 20)
        + 1;
    let mut root = GptPartition::new(ROOT_PARTLABEL, root_mib, Some(&artifacts.root_sqsh));
    root.guid = Some(ROOT_PARTUUID.into());
    let mut data = GptPartition::new(DATA_PARTLABEL, 32, Some(&data_image));
    data.guid = Some(DATA_PARTUUID.into());
    let path = scratch.join("disk.img");
    let extents = make_gpt_disk(&path, &[root, data]);
    GptDisk {
        path,
        data: extents[1],
    }
}

/// `path` read out of the ext4 partition at `extent` of `disk`.
fn read_from_partition(
    disk: &Path,
    extent: Extent,
    path: &str,
    scratch: &Scratch,
) -> Option<Vec<u8>> {
    let partition = scratch.join("partition.ext4");
    extract(disk, extent, &partition);
    ext4_read_file(&partition, path)
}

/// Two boots of one GPT disk with the given device specs: boot 1 checks what got mounted
/// where and writes a file, boot 2 reads it back; then the file must be in `upper/` of the
/// ext4 partition's bytes.
fn persists_across_two_boots(name: &str, specs: &str) {
    let scratch = Scratch::new(name);
    let disk = gpt_disk(&scratch);
    let mounts_ok = "grep -q '^/dev/vda1 /rom squashfs ' /proc/mounts && \
                     grep -q '^/dev/vda2 /overlay ext4 ' /proc/mounts && \
                     grep -q '^overlay / overlay ' /proc/mounts";
    let boot_with = |script: String| {
        boot(&BootSpec {
            append: format!("{specs} ovl.onfail=halt {}", test_init_args(&script)),
            disks: vec![Disk::rw(&disk.path)],
            ..Default::default()
        })
    };

    let first = boot_with(format!(
        "{mounts_ok} && ! test -e /persisted && echo written-in-boot-1 > /persisted"
    ));
    assert_test_passed(&first);
    assert_marker(&first, "is /dev/vda1");
    assert_marker(&first, "is /dev/vda2");

    let second = boot_with(format!(
        "{mounts_ok} && grep -qx written-in-boot-1 /persisted && echo PERSIST-OK"
    ));
    assert_test_passed(&second);
    assert_marker(&second, "\nPERSIST-OK");

    assert_eq!(
        read_from_partition(&disk.path, disk.data, "/upper/persisted", &scratch).as_deref(),
        Some(&b"written-in-boot-1\n"[..]),
        "the file is not in upper/ on the ext4 partition\n{second:?}"
    );
}

#[test]
fn gpt_disk_by_partlabel_and_label_keeps_changes_across_boots() {
    persists_across_two_boots(
        "devices-partlabel",
        &format!("root=PARTLABEL={ROOT_PARTLABEL} ovl.upper=LABEL={DATA_LABEL}"),
    );
}

#[test]
fn gpt_disk_by_partuuid_and_uuid_keeps_changes_across_boots() {
    // Upper-case on the command line: UUIDs compare without regard to case.
    persists_across_two_boots(
        "devices-partuuid",
        &format!(
            "root=PARTUUID={ROOT_PARTUUID} ovl.upper=UUID={}",
            DATA_UUID.to_ascii_uppercase()
        ),
    );
}

/// The upper disk is not there when the init starts looking; it is attached through the
/// QEMU monitor once the init says it is still waiting for it, and the boot goes on with it
/// (the wait is unbounded with `rootwait`; the harness's timeout bounds the test).
#[test]
fn upper_disk_attached_while_the_init_waits_is_found_and_used() {
    let scratch = Scratch::new("devices-hotplug");
    let artifacts = artifacts();
    let root_mib = std::fs::metadata(&artifacts.root_sqsh)
        .unwrap()
        .len()
        .div_ceil(1 << 20)
        + 1;
    let root_disk = scratch.join("root.img");
    make_gpt_disk(
        &root_disk,
        &[GptPartition::new(
            ROOT_PARTLABEL,
            root_mib,
            Some(&artifacts.root_sqsh),
        )],
    );
    let late_disk = scratch.join("late.ext4");
    make_ext4(&late_disk, 32, None, &["-L", "late_data"]);
    let monitor = scratch.join("monitor.sock");
    let waiting = "still waiting for LABEL=late_data";
    let attach = |command: String| Trigger {
        after: waiting.into(),
        action: Action::Monitor(command),
    };
    let script = "grep -q '^/dev/vdb /overlay ext4 ' /proc/mounts && echo hotplugged > /late-file";

    let result = boot(&BootSpec {
        append: format!(
            "root=PARTLABEL={ROOT_PARTLABEL} ovl.upper=LABEL=late_data rootwait ovl.onfail=halt {}",
            test_init_args(script)
        ),
        disks: vec![Disk::ro(&root_disk)],
        monitor: Some(monitor),
        triggers: vec![
            attach(format!(
                "drive_add 0 if=none,id=late,format=raw,file={}",
                late_disk.display()
            )),
            attach("device_add virtio-blk-pci,drive=late,id=late-disk".into()),
        ],
        ..Default::default()
    });

    assert_marker(&result, waiting);
    assert_eq!(
        result.monitor_replies.len(),
        2,
        "the disk was not attached\n{result:?}"
    );
    assert_marker(&result, "LABEL=late_data is /dev/vdb");
    assert_no_marker(&result, "persistent upper not found");
    assert_test_passed(&result);
    assert_eq!(
        ext4_read_file(&late_disk, "/upper/late-file").as_deref(),
        Some(&b"hotplugged\n"[..]),
        "{result:?}"
    );
}

/// The kernel's timestamp (`[  12.345678] `) of the first console line containing `text`.
/// `root=LABEL=` naming nothing: the init gives up after `ovl.timeout`, not later, and the
/// failure names the spec and lists the devices it saw with their names and ids.
#[test]
fn missing_label_fails_after_the_timeout_listing_the_devices_seen() {
    missing_label_fails_after_the_timeout(Arch::X86_64);
}

#[test]
fn missing_label_fails_after_the_timeout_listing_the_devices_seen_aarch64() {
    missing_label_fails_after_the_timeout(Arch::Aarch64);
}

fn missing_label_fails_after_the_timeout(arch: Arch) {
    const TIMEOUT_SECS: u32 = 3;
    let scratch = Scratch::new("devices-missing");
    let disk = gpt_disk_for(arch, &scratch);

    let result = boot(&BootSpec {
        arch,
        append: format!(
            // loglevel=8: the kernel echoes (and timestamps) the init's debug lines too.
            "root=LABEL=no_such_label ovl.timeout={TIMEOUT_SECS} ovl.onfail=halt ovl.debug loglevel=8 {}",
            test_init_args("true")
        ),
        disks: vec![Disk::rw(&disk.path)],
        timeout: Duration::from_secs(60),
        ..Default::default()
    });

    assert_marker(&result, "BOOT FAILED");
    assert_marker(
        &result,
        "no block device matches LABEL=no_such_label after waiting",
    );
    assert_marker(&result, "block devices were seen:");
    assert_marker(&result, "/dev/vda1 (");
    assert_marker(
        &result,
        &format!(
            "partition 1 of vda): squashfs PARTLABEL=\"{ROOT_PARTLABEL}\" PARTUUID={ROOT_PARTUUID}"
        ),
    );
    assert_marker(
        &result,
        &format!(
            "/dev/vda2 (32.0 MiB, partition 2 of vda): ext4 LABEL=\"{DATA_LABEL}\" UUID={DATA_UUID} PARTLABEL=\"{DATA_PARTLABEL}\" PARTUUID={DATA_PARTUUID}"
        ),
    );
    assert_marker(&result, "/dev/vda (");
    assert_no_marker(&result, "OVLTEST: pid=");
    assert_exit(&result, Exit::PowerOff);

    // How long the init waited, as it says and as the kernel's clock says.
    let waited: f64 = result
        .values("after waiting ")
        .first()
        .and_then(|rest| rest.split('s').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no wait time in the message\n{result:?}"));
    assert!(
        (f64::from(TIMEOUT_SECS)..f64::from(TIMEOUT_SECS) + 1.0).contains(&waited),
        "waited {waited} s for ovl.timeout={TIMEOUT_SECS}\n{result:?}"
    );
    // The wait starts when the modules step ends.
    let started = result
        .kernel_time_of("overlay-init: step modules:")
        .expect("no modules step line");
    let failed = result
        .kernel_time_of("overlay-init: boot failed at step")
        .expect("no failure line");
    assert!(
        failed - started < f64::from(TIMEOUT_SECS) + 1.0,
        "the failure came {:.2} s after the wait began, for ovl.timeout={TIMEOUT_SECS}\n{result:?}",
        failed - started
    );
}
