//! Router mode in QEMU (issue 6): overlay-init is `init=` on a squashfs root that the
//! kernel mounted, with no initramfs: `root=/dev/vda1 rootfstype=squashfs
//! init=/sbin/overlay-init` on a GPT disk whose second partition holds the upper.
//!
//! **The kernel.** `qemu/build-router-kernel` builds a small kernel from Debian's
//! `linux-source` with virtio_blk, squashfs, ext4, overlayfs and loop built in and no module
//! support (cached in $OVERLAY_INIT_CACHE/router-kernel; the first build takes a few
//! minutes, see qemu/README.md). The `router_mode_kernel_mounted_*` tests boot it with no
//! initramfs, as a router boots: the kernel itself mounts `/dev/vda1` read-only on `/` and
//! executes overlay-init. A kernel that cannot be built fails these tests.
//!
//! **Kernel stand-in.** Debian's cloud kernel has virtio_blk, squashfs, overlay and loop as
//! modules. One test boots it with a tiny busybox initramfs that does only what a kernel with
//! the disk drivers built in would do (load virtio_blk + squashfs, mount `root=` read-only,
//! `switch_root` into `init=`), so that overlay-init itself loads overlay.ko and loop.ko from
//! the root's `/lib/modules/overlay-init.index`: the one thing the built kernel, which has no
//! modules, cannot show.
//!
//! Run: `cargo test --test qemu router::` (as root; builds the artifacts and the kernel on
//! first use).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

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

/// PID 1's program and first argument (its full command line holds the whole test script,
/// which would match every marker below), the squashfs mount count, what is left of the staging tmpfs.
const SHOW_ROUTER: &str =
    "echo PID1=$(tr '\\0' '\\n' < /proc/1/cmdline | head -n2 | tr '\\n' ' '); \
     echo SQUASHFS-MOUNTS=$(grep -c ' squashfs ' /proc/mounts); \
     echo ROM-TMP-ENTRIES=$(ls -A /rom/tmp | wc -l); \
     test -x /rom/sbin/overlay-init && echo ROM-HAS-OVERLAY-INIT";

/// Whether `/proc/modules` exists (a kernel without module support has none) and what is
/// loaded.
const SHOW_MODULES: &str = "if test -e /proc/modules; then echo LOADED-MODULES=$(cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' '); else echo NO-MODULE-SUPPORT; fi";

/// How the squashfs root gets mounted before overlay-init runs.
enum KernelMountsRoot {
    /// The kernel of `qemu/build-router-kernel`, no initramfs.
    Itself,
    /// Debian's kernel with the stand-in initramfs at this path (see the module doc).
    ViaStandIn(PathBuf),
}

fn stand_in_initramfs(scratch: &Scratch) -> KernelMountsRoot {
    let mut modules: Vec<String> = VIRTIO_BLK_MODULES.iter().map(|m| m.to_string()).collect();
    modules.push("squashfs".into());
    let out = scratch.join("kernel-stand-in.cpio");
    BusyboxInitramfs {
        init_script: KERNEL_STAND_IN.into(),
        modules,
        files: Vec::new(),
    }
    .build(&out);
    KernelMountsRoot::ViaStandIn(out)
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

/// What goes into the squashfs root besides the demo root (with `/sbin/overlay-init`).
#[derive(Default)]
struct RootOptions<'a> {
    /// No `/run` (OpenWrt's layout).
    without_run: bool,
    /// overlay.ko, loop.ko and the module index router mode loads them from (for Debian's
    /// kernel; the built router kernel has no module support).
    module_index: bool,
    /// (source, path inside the root).
    extra_files: &'a [(&'a Path, &'a str)],
}

fn router_root(scratch: &Scratch, options: &RootOptions) -> PathBuf {
    let tree = scratch.join("root-tree");
    copy_tree(&artifacts().root_dir, &tree);
    if options.module_index {
        let modules = tree.join("lib/modules");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::copy(module_file("overlay"), modules.join("overlay.ko")).unwrap();
        std::fs::copy(module_file("loop"), modules.join("loop.ko")).unwrap();
        write_file(
            &modules.join("overlay-init.index"),
            "# overlay-init module index v1\noverlay overlay.ko\nloop loop.ko\n",
            0o644,
        );
    }
    for (source, inside) in options.extra_files {
        let target = tree.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(source, target).unwrap();
    }
    if options.without_run {
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

fn router_boot(kernel: &KernelMountsRoot, disk: &Path, extra: &str, script: &str) -> BootResult {
    assert!(!script.contains('"'), "{script}");
    let (kernel, initrd) = match kernel {
        KernelMountsRoot::Itself => (Some(router_kernel().to_path_buf()), Initrd::None),
        KernelMountsRoot::ViaStandIn(initrd) => (None, Initrd::Path(initrd.clone())),
    };
    boot(&BootSpec {
        append: format!(
            "root=/dev/vda1 rootfstype=squashfs init=/sbin/overlay-init {extra} \
             ovl.init=/sbin/test-init -- \"{script}\""
        ),
        disks: vec![Disk::rw(disk)],
        kernel,
        initrd,
        ..Default::default()
    })
}

#[test]
fn router_mode_kernel_mounted_squashfs_root_persists_and_resets() {
    let scratch = Scratch::new("router-persist");
    let kernel = KernelMountsRoot::Itself;
    let root = router_root(&scratch, &RootOptions::default());
    let (disk, data) = router_disk(&scratch, &root);

    let first = router_boot(
        &kernel,
        &disk,
        "ovl.upper=/dev/vda2",
        &format!("{SHOW_MOUNTS}; {SHOW_ROUTER}; {SHOW_MODULES}; echo boot-one > /root/kept; sync"),
    );
    assert_test_passed(&first);
    // The kernel mounted the root itself: no initramfs, no modules.
    assert_marker(&first, "VFS: Mounted root (squashfs filesystem) readonly");
    assert_no_marker(&first, "Unpacking initramfs");
    assert_output_line(&first, "NO-MODULE-SUPPORT");
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
    assert_output_line(&first, "ROM-HAS-OVERLAY-INIT");

    let second = router_boot(
        &kernel,
        &disk,
        "ovl.upper=/dev/vda2",
        "echo KEPT=$(cat /root/kept); echo ROM-KEPT=$(cat /rom/root/kept 2>/dev/null || echo absent); \
         /sbin/overlay-init status; /sbin/overlay-init mark-good",
    );
    assert_test_passed(&second);
    assert_output(&second, "KEPT=boot-one");
    // /rom is the squashfs alone: the write went to the upper.
    assert_output(&second, "ROM-KEPT=absent");
    // The boot counter and the state file are kept in router mode too.
    assert_output(&second, "upper: /dev/vda2");
    assert_output(&second, "boot attempts since mark-good: 2 of 3");
    // The lower's identity, read from the device the kernel mounted as / (issue 13).
    assert_output(&second, "lower: squashfs");
    assert_output(&second, "last upgrade: none seen");
    assert_output(&second, "boot marked good");
    // On the partition itself, the file sits in upper/.
    let data_image = scratch.join("data.ext4");
    extract(&disk, data, &data_image);
    assert_eq!(
        ext4_read_file(&data_image, "/upper/root/kept").as_deref(),
        Some(&b"boot-one\n"[..])
    );

    let reset = router_boot(
        &kernel,
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
        &kernel,
        &disk,
        "ovl.upper=/dev/vda2",
        "echo KEPT=$(cat /root/kept 2>/dev/null || echo gone)",
    );
    assert_test_passed(&after_reset);
    assert_output(&after_reset, "KEPT=gone");
}

/// An ovl.lower= file on the root (loop-mounted) and an OpenWrt root without /run.
fn openwrt_layout_with_file_lower(kernel: &KernelMountsRoot, scratch: &Scratch) -> BootResult {
    let extra = extra_lower_image(scratch);
    let root = router_root(
        scratch,
        &RootOptions {
            without_run: true,
            module_index: matches!(kernel, KernelMountsRoot::ViaStandIn(_)),
            extra_files: &[(&extra, "/extra.sqsh")],
        },
    );
    let (disk, _) = router_disk(scratch, &root);

    let result = router_boot(
        kernel,
        &disk,
        "ovl.lower=/extra.sqsh",
        &format!("{SHOW_MOUNTS}; {SHOW_ROUTER}; {SHOW_MODULES}; echo RUN=$(test -e /run && echo present || echo absent); echo x > /etc/w && echo WRITABLE; echo EXTRA=$(cat /only-in-extra)"),
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
    assert_output_line(&result, "WRITABLE");
    // A file entry of ovl.lower= is on the root itself, loop-mounted.
    assert_output(&result, "EXTRA=from the extra image");
    result
}

#[test]
fn router_mode_kernel_mounted_openwrt_layout_without_run_tmpfs_upper_file_lower() {
    let scratch = Scratch::new("router-no-run");
    let result = openwrt_layout_with_file_lower(&KernelMountsRoot::Itself, &scratch);
    assert_marker(&result, "VFS: Mounted root (squashfs filesystem) readonly");
    assert_output_line(&result, "NO-MODULE-SUPPORT");
}

#[test]
fn router_mode_with_kernel_stand_in_loads_overlay_and_loop_from_the_root_module_index() {
    let scratch = Scratch::new("router-index");
    let kernel = stand_in_initramfs(&scratch);
    let result = openwrt_layout_with_file_lower(&kernel, &scratch);
    assert_marker(&result, "STANDIN: root=/dev/vda1 mounted read-only");
    // The stand-in loaded only the disk stack and squashfs; overlay-init loaded the rest
    // from /lib/modules/overlay-init.index on the root.
    let modules = result
        .output()
        .lines()
        .find_map(|line| line.strip_prefix("LOADED-MODULES="))
        .unwrap_or_else(|| panic!("no LOADED-MODULES= line\n{result:?}"));
    for module in ["overlay", "loop", "squashfs", "virtio_blk"] {
        assert!(
            modules.split(' ').any(|loaded| loaded == module),
            "{module} is not loaded: {modules}\n{result:?}"
        );
    }
}

#[test]
fn router_mode_kernel_mounted_failsafe_leaves_the_upper_read_only() {
    let scratch = Scratch::new("router-failsafe");
    let kernel = KernelMountsRoot::Itself;
    let root = router_root(&scratch, &RootOptions::default());
    let (disk, _) = router_disk(&scratch, &root);

    let failsafe = router_boot(
        &kernel,
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
    assert_output_line(&failsafe, "WRITABLE");
    assert_output(&failsafe, "mode: failsafe");

    let normal = router_boot(
        &kernel,
        &disk,
        "ovl.upper=/dev/vda2",
        "echo LOST=$(cat /root/lost 2>/dev/null || echo absent)",
    );
    assert_test_passed(&normal);
    assert_output(&normal, "LOST=absent");
}

#[test]
fn router_mode_kernel_mounted_missing_upper_boots_on_tmpfs() {
    let scratch = Scratch::new("router-no-upper");
    let kernel = KernelMountsRoot::Itself;
    let root = router_root(&scratch, &RootOptions::default());
    let (disk, _) = router_disk(&scratch, &root);

    let result = router_boot(
        &kernel,
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
    assert_output_line(&result, "WRITABLE");
}

// ---------------------------------------------------------------------------------------------
// f2fs upper (issue 14): first-boot format, whiteouts and opaque directories, reset

/// `program` and the shared libraries and loader `ldd` lists for it, each at its own path.
fn program_with_libraries(program: &str) -> Vec<(PathBuf, String)> {
    let mut files = vec![(PathBuf::from(program), program.to_string())];
    for line in run(Command::new("ldd").arg(program)).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push((PathBuf::from(path), path.to_string()));
        }
    }
    files
}

/// A blank (zeroed) data partition and `ovl.upperfstype=f2fs` on the router kernel: boot 1
/// formats it with the root's own mkfs.f2fs, deletes a lower file (whiteout), replaces a lower
/// directory (rmdir + mkdir: opaque) and writes a file; boot 2 sees all three; a reset brings
/// the lower's files back.
#[test]
fn router_mode_blank_partition_is_formatted_f2fs_and_keeps_whiteouts_and_opaque_dirs() {
    let scratch = Scratch::new("router-f2fs");
    let kernel = KernelMountsRoot::Itself;
    let files = program_with_libraries("/sbin/mkfs.f2fs");
    let extra: Vec<(&Path, &str)> = files
        .iter()
        .map(|(source, inside)| (source.as_path(), inside.as_str()))
        .collect();
    let root = router_root(
        &scratch,
        &RootOptions {
            extra_files: &extra,
            ..Default::default()
        },
    );
    let root_mib = std::fs::metadata(&root).unwrap().len().div_ceil(1 << 20) + 1;
    let disk = scratch.join("disk.img");
    make_gpt_disk(
        &disk,
        &[
            GptPartition::new("rom", root_mib, Some(&root)),
            GptPartition::new("data", 64, None),
        ],
    );
    let params = "ovl.upper=/dev/vda2 ovl.upperfstype=f2fs";
    let first = router_boot(
        &kernel,
        &disk,
        params,
        &format!(
            "{SHOW_MOUNTS}; rm /etc/motd && rm -r /etc/init.d && mkdir /etc/init.d && \
             echo new > /etc/init.d/only && echo boot-one > /root/kept && sync"
        ),
    );
    assert_marker(
        &first,
        "formatted /dev/vda2 (f2fs, label overlay, 64 MiB) in ",
    );
    assert_output(&first, "MOUNT /overlay f2fs rw");
    assert_test_passed(&first);

    let check = "echo KEPT=$(cat /root/kept 2>/dev/null || echo gone); \
                 echo MOTD=$(test -e /etc/motd && echo back || echo gone); \
                 echo INITD=$(ls /etc/init.d | tr '\\n' ' ')";
    let second = router_boot(&kernel, &disk, params, &format!("{SHOW_MOUNTS}; {check}"));
    assert_no_marker(&second, "formatted /dev/");
    assert_output(&second, "MOUNT /overlay f2fs rw");
    assert_output(&second, "KEPT=boot-one");
    assert_output(&second, "MOTD=gone");
    assert_output_line(&second, "INITD=only");
    assert_test_passed(&second);

    let reset = router_boot(&kernel, &disk, &format!("{params} ovl.reset"), check);
    assert_output(&reset, "KEPT=gone");
    assert_output(&reset, "MOTD=back");
    assert_output_line(&reset, "INITD=rcK rcS");
    assert_test_passed(&reset);
}
