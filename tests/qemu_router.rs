//! Router mode in QEMU (issue 6): overlay-init is `init=` on a squashfs root that the
//! kernel mounted, with no initramfs of its own.
//!
//! **Kernel stand-in.** Debian's kernel has virtio_blk and squashfs as modules, so it cannot
//! mount a virtio squashfs root by itself, and building a kernel here would not fit CI. Each
//! boot therefore uses a tiny busybox initramfs that does only what a kernel with those
//! drivers built in would do: load virtio_blk + squashfs, mount `root=` (with `rootfstype=`)
//! read-only, and `switch_root` into it executing `init=` with the kernel's init arguments.
//! What runs from there on is the router-mode path of overlay-init as on real hardware: `/`
//! is the kernel-mounted squashfs (mountinfo shows it over the emptied rootfs, exactly what
//! the kernel leaves after mounting a root itself).
//!
//! **Modules.** The stand-in loads nothing overlay-init needs: the squashfs root carries
//! `overlay.ko` and `/lib/modules/overlay-init.index`, which router mode loads when the
//! index exists (a router kernel has overlayfs built in and ships no index).
//!
//! Run: `cargo test --test qemu_router` (as root; builds the artifacts on first use).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The stand-in for a kernel that mounts `root=` itself (see the module doc).
const KERNEL_STAND_IN: &str = r#"set -f
busybox mount -t proc proc /proc
busybox mount -t devtmpfs devtmpfs /dev
for m in $(busybox cat /lib/modules/order); do busybox insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
root=; fstype=auto; init=/sbin/init
for p in $(busybox cat /proc/cmdline); do
    case $p in
        root=*) root=${p#root=};;
        rootfstype=*) fstype=${p#rootfstype=};;
        init=*) init=${p#init=};;
        --) break;;
    esac
done
if ! busybox mount -t $fstype -o ro $root /newroot; then
    echo "STANDIN: cannot mount root=$root"; busybox poweroff -f
fi
# The kernel leaves no /proc or /dev mounted for a root it mounted itself.
busybox umount /dev /proc
echo "STANDIN: root=$root mounted read-only, exec $init"
exec busybox switch_root /newroot $init "$@"
"#;

/// Prints `MOUNT <mountpoint> <fstype> <ro|rw>` for `/`, `/rom`, `/overlay` and `/run`.
const SHOW_MOUNTS: &str =
    "while read dev mp fs opts rest; do case $mp in /|/rom|/overlay|/run) echo MOUNT $mp $fs ${opts%%,*};; esac; done < /proc/mounts";

/// PID 1's command line, the squashfs mount count, what is left of the staging tmpfs.
const SHOW_ROUTER: &str = "echo PID1=$(tr '\\0' ' ' < /proc/1/cmdline); \
     echo SQUASHFS-MOUNTS=$(grep -c ' squashfs ' /proc/mounts); \
     echo ROM-TMP-ENTRIES=$(ls -A /rom/tmp | wc -l); \
     test -x /rom/sbin/overlay-init && echo ROM-HAS-OVERLAY-INIT";

fn stand_in_initramfs(scratch: &Scratch) -> PathBuf {
    let mut modules: Vec<String> = VIRTIO_BLK_MODULES.iter().map(|m| m.to_string()).collect();
    modules.push("squashfs".into());
    let out = scratch.join("kernel-stand-in.cpio");
    BusyboxInitramfs {
        init_script: KERNEL_STAND_IN.into(),
        modules,
        files: Vec::new(),
    }
    .build(&out);
    out
}

/// `NAME.ko` in the cached kernel's module tree.
fn module_file(name: &str) -> PathBuf {
    let found = run(Command::new("find")
        .arg(&kernel().modules)
        .args(["-name", &format!("{name}.ko")]));
    let path = found
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no {name}.ko in {}", kernel().modules.display()));
    PathBuf::from(path)
}

/// The demo root (with `/sbin/overlay-init`) as a squashfs, plus overlay.ko, loop.ko and the
/// module index router mode loads them from. `without_run`: no `/run` (OpenWrt's layout).
/// `extra_files`: (source, path inside the root).
fn router_root(scratch: &Scratch, without_run: bool, extra_files: &[(&Path, &str)]) -> PathBuf {
    let tree = scratch.join("root-tree");
    copy_tree(&artifacts().root_dir, &tree);
    let modules = tree.join("lib/modules");
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::copy(module_file("overlay"), modules.join("overlay.ko")).unwrap();
    std::fs::copy(module_file("loop"), modules.join("loop.ko")).unwrap();
    write_file(
        &modules.join("overlay-init.index"),
        "# overlay-init module index v1\noverlay overlay.ko\nloop loop.ko\n",
        0o644,
    );
    for (source, inside) in extra_files {
        std::fs::copy(source, tree.join(inside.trim_start_matches('/'))).unwrap();
    }
    if without_run {
        std::fs::remove_dir(tree.join("run")).unwrap();
    }
    let image = scratch.join("root.sqsh");
    make_squashfs(&tree, &image);
    image
}

/// A GPT disk: partition 1 the squashfs root, partition 2 an empty ext4 for the upper.
fn router_disk(scratch: &Scratch, root: &Path) -> (PathBuf, Extent) {
    let root_mib = std::fs::metadata(root).unwrap().len().div_ceil(1 << 20) + 1;
    let disk = scratch.join("disk.img");
    let extents = make_gpt_disk(
        &disk,
        &[
            GptPartition::new("rom", root_mib, Some(root)),
            GptPartition::new("data", 64, Some(&artifacts().upper_ext4)),
        ],
    );
    (disk, extents[1])
}

fn router_boot(initrd: &Path, disk: &Path, extra: &str, script: &str) -> BootResult {
    assert!(!script.contains('"'), "{script}");
    boot(&BootSpec {
        append: format!(
            "root=/dev/vda1 rootfstype=squashfs init=/sbin/overlay-init {extra} \
             ovl.init=/sbin/test-init -- \"{script}\""
        ),
        disks: vec![Disk::rw(disk)],
        initrd: Initrd::Path(initrd.to_path_buf()),

        ..Default::default()
    })
}

#[test]
fn router_mode_with_kernel_stand_in_persists_on_second_partition_and_resets() {
    let scratch = Scratch::new("router-persist");
    let initrd = stand_in_initramfs(&scratch);
    let root = router_root(&scratch, false, &[]);
    let (disk, data) = router_disk(&scratch, &root);

    let first = router_boot(
        &initrd,
        &disk,
        "ovl.upper=/dev/vda2",
        &format!("{SHOW_MOUNTS}; {SHOW_ROUTER}; echo boot-one > /root/kept; sync"),
    );
    assert_test_passed(&first);
    assert_marker(&first, "STANDIN: root=/dev/vda1 mounted read-only");
    assert_marker(&first, "starting in router mode");
    assert_output(&first, "MOUNT / overlay rw");
    assert_output(&first, "MOUNT /rom squashfs ro");
    assert_output(&first, "MOUNT /overlay ext4 rw");
    assert_output(&first, "MOUNT /run tmpfs");
    // PID 1 is the real init (ovl.init=), not overlay-init; the root was never mounted twice.
    assert_marker(&first, "OVLTEST: pid=1 ");
    assert_output(&first, "PID1=/bin/sh /sbin/test-init");
    assert_output(&first, "SQUASHFS-MOUNTS=1");
    // The staging tmpfs on the squashfs's /tmp was detached after the pivot.
    assert_output(&first, "ROM-TMP-ENTRIES=0");
    assert_output(&first, "ROM-HAS-OVERLAY-INIT");

    let second = router_boot(
        &initrd,
        &disk,
        "ovl.upper=/dev/vda2",
        "echo KEPT=$(cat /root/kept); /sbin/overlay-init status; /sbin/overlay-init mark-good",
    );
    assert_test_passed(&second);
    assert_output(&second, "KEPT=boot-one");
    // The boot counter and the state file are kept in router mode too.
    assert_output(&second, "upper: /dev/vda2");
    assert_output(&second, "boot attempts since mark-good: 2 of 3");
    assert_output(&second, "boot marked good");
    // On the partition itself, the file sits in upper/.
    let data_image = scratch.join("data.ext4");
    extract(&disk, data, &data_image);
    assert_eq!(
        ext4_read_file(&data_image, "/upper/root/kept").as_deref(),
        Some(&b"boot-one\n"[..])
    );

    let reset = router_boot(
        &initrd,
        &disk,
        "ovl.upper=/dev/vda2 ovl.reset",
        "echo KEPT=$(cat /root/kept 2>/dev/null || echo gone); echo ETC=$(test -d /etc && echo ok)",
    );
    assert_test_passed(&reset);
    assert_output(&reset, "KEPT=gone");
    // The old upper is removed after the pivot, as after switch_root.
    assert_marker(&reset, "reset: removing the trash in the background");
    assert_output(&reset, "ETC=ok");

    let after_reset = router_boot(
        &initrd,
        &disk,
        "ovl.upper=/dev/vda2",
        "echo KEPT=$(cat /root/kept 2>/dev/null || echo gone)",
    );
    assert_test_passed(&after_reset);
    assert_output(&after_reset, "KEPT=gone");
}

#[test]
fn router_mode_with_kernel_stand_in_openwrt_layout_without_run_tmpfs_upper_file_lower() {
    let scratch = Scratch::new("router-no-run");
    let initrd = stand_in_initramfs(&scratch);
    let extra_tree = scratch.join("extra");
    write_file(
        &extra_tree.join("only-in-extra"),
        "from the extra image\n",
        0o644,
    );
    let extra = scratch.join("extra.sqsh");
    make_squashfs(&extra_tree, &extra);
    let root = router_root(&scratch, true, &[(&extra, "/extra.sqsh")]);
    let (disk, _) = router_disk(&scratch, &root);

    let result = router_boot(
        &initrd,
        &disk,
        "ovl.lower=/extra.sqsh",
        &format!("{SHOW_MOUNTS}; {SHOW_ROUTER}; echo RUN=$(test -e /run && echo present || echo absent); echo x > /etc/w && echo WRITABLE; echo EXTRA=$(cat /only-in-extra)"),
    );
    assert_test_passed(&result);
    assert_marker(&result, "/run is not a directory on the root");
    assert_output(&result, "MOUNT / overlay");
    assert_output(&result, "MOUNT /rom squashfs");
    assert_output(&result, "MOUNT /overlay tmpfs");
    assert_no_output(&result, "MOUNT /run");
    assert_output(&result, "RUN=absent");
    assert_output(&result, "PID1=/bin/sh /sbin/test-init");
    assert_output(&result, "ROM-TMP-ENTRIES=0");
    assert_output(&result, "WRITABLE");
    // A file entry of ovl.lower= is on the root itself, loop-mounted (loop.ko from the index).
    assert_output(&result, "EXTRA=from the extra image");
}

#[test]
fn router_mode_with_kernel_stand_in_failsafe_leaves_the_upper_read_only() {
    let scratch = Scratch::new("router-failsafe");
    let initrd = stand_in_initramfs(&scratch);
    let root = router_root(&scratch, false, &[]);
    let (disk, _) = router_disk(&scratch, &root);

    let failsafe = router_boot(
        &initrd,
        &disk,
        "ovl.upper=/dev/vda2 ovl.failsafe",
        &format!(
            "{SHOW_MOUNTS}; echo lost > /root/lost && echo WRITABLE; /sbin/overlay-init status"
        ),
    );
    assert_test_passed(&failsafe);
    assert_marker(&failsafe, "FAILSAFE boot");
    assert_output(&failsafe, "MOUNT / overlay");
    assert_output(&failsafe, "MOUNT /overlay ext4 ro");
    assert_output(&failsafe, "WRITABLE");
    assert_output(&failsafe, "mode: failsafe");

    let normal = router_boot(
        &initrd,
        &disk,
        "ovl.upper=/dev/vda2",
        "echo LOST=$(cat /root/lost 2>/dev/null || echo absent)",
    );
    assert_test_passed(&normal);
    assert_output(&normal, "LOST=absent");
}

#[test]
fn router_mode_with_kernel_stand_in_missing_upper_boots_on_tmpfs() {
    let scratch = Scratch::new("router-no-upper");
    let initrd = stand_in_initramfs(&scratch);
    let root = router_root(&scratch, false, &[]);
    let (disk, _) = router_disk(&scratch, &root);

    let result = router_boot(
        &initrd,
        &disk,
        "ovl.upper=PARTLABEL=nowhere ovl.timeout=2",
        &format!("{SHOW_MOUNTS}; echo x > /etc/w && echo WRITABLE"),
    );
    assert_test_passed(&result);
    assert_marker(
        &result,
        "persistent upper not found, booting on a tmpfs upper",
    );
    assert_output(&result, "MOUNT /overlay tmpfs");
    assert_output(&result, "WRITABLE");
}
