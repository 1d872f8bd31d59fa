//! The dm-verity setup code (`sys::dm`, `sys::verity`) against a real kernel: Debian's
//! cloud kernel in QEMU, with dm-mod and dm-verity loaded from its module tree. The
//! development host's kernel has no device-mapper (and no modules), so this is where the
//! ioctls meet a kernel. The guest is a busybox initramfs that runs `examples/dm_verity.rs`
//! (built static) on images made here with `veritysetup format`.
//!
//! One boot runs every case and prints a marker per result:
//! - the right root hash over a separate hash device: the dm device made by our ioctls
//!   mounts and reads back the files, and `/proc/mounts` shows it;
//! - a wrong root hash: `open` fails naming the device and leaves no dm device behind;
//! - a flipped byte in data block 0: `open` fails the same way (the corruption found at setup);
//! - a flipped byte deep in a file: setup and mount succeed, reading that file gives EIO,
//!   the verity status turns to `C`, other files still read;
//! - a hash tree appended to the image (`--hash-offset`): mounts and reads, with the offset
//!   given and with the offset found from the squashfs superblock;
//! - at the end no dm device is left.
//!
//! Run: `OVL_QEMU_JOBS=1 cargo test --test qemu verity_dm::`.

use crate::support::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The dm-verity stack of Debian's kernel, in load order (`dm_verity` depends on
/// reed_solomon, dm_mod and dm_bufio there).
const DM_VERITY_MODULES: &[&str] = &["reed_solomon", "dm_mod", "dm_bufio", "dm_verity"];

/// The example built static for the guest, for the target the init is built for
/// (`qemu/lib.sh` `init_target`: musl, else glibc with `+crt-static`).
fn dm_verity_tool(scratch: &Scratch) -> PathBuf {
    let lib = repo_dir().join("qemu/lib.sh");
    let target = run(Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && init_target", lib.display())));
    let target = target.trim();
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "--quiet",
            "--example",
            "dm_verity",
            "--target",
            target,
        ])
        .arg("--manifest-path")
        .arg(repo_dir().join("Cargo.toml"));
    if target.ends_with("gnu") {
        let flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        build.env(
            "RUSTFLAGS",
            format!("{flags} -C target-feature=+crt-static"),
        );
    }
    run(&mut build);
    let built = target_dir().join(target).join("debug/examples/dm_verity");
    let stripped = scratch.join("dm_verity");
    run(Command::new("strip").arg("-o").arg(&stripped).arg(&built));
    stripped
}

/// The disks of every boot here: vda the squashfs, vdb its hash tree, vdc and vdd copies with
/// one byte flipped (in verity block 0, and 200 KiB into the file `big`), vde the squashfs
/// with its tree appended.
struct Images {
    tree: PathBuf,
    data: PathBuf,
    hash: PathBuf,
    corrupt_block0: PathBuf,
    corrupt_deep: PathBuf,
    appended: PathBuf,
    root: String,
    wrong: String,
    offset: String,
    appended_root: String,
    /// The verity data block holding the flipped byte of `corrupt_deep`.
    deep_block: usize,
}

impl Images {
    fn new(scratch: &Scratch) -> Images {
        let tree = scratch.join("tree");
        write_file(&tree.join("hello"), "verified hello\n", 0o644);
        let big = noise(256 * 1024, 0x9e3779b97f4a7c15);
        write_file(&tree.join("big"), &big, 0o644);
        let data = scratch.join("data.squashfs");
        make_squashfs(&tree, &data);
        let image = fs::read(&data).unwrap();
        assert_eq!(image.len() % 4096, 0, "mksquashfs pads to 4 KiB");

        // Separate hash device.
        let hash = scratch.join("hash.img");
        let root = veritysetup_format(&data, &hash, &[]);
        let mut wrong = root.clone().into_bytes();
        wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();

        // Where `big` is in the image: its first bytes (in verity block 0) and 200 KiB in.
        let find = |needle: &[u8]| {
            image
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("big is stored uncompressed")
        };
        let big_start = find(&big[..64]);
        let deep = find(&big[200 * 1024..200 * 1024 + 64]);
        assert!(
            big_start < 4096,
            "big starts in verity block 0 ({big_start})"
        );
        assert!(
            deep / 4096 > 8,
            "the deep byte is far from block 0 ({deep})"
        );
        let corrupt_block0 = scratch.join("corrupt0.squashfs");
        flipped_copy(&data, big_start + 10, &corrupt_block0);
        let corrupt_deep = scratch.join("corrupt-deep.squashfs");
        flipped_copy(&data, deep + 10, &corrupt_deep);

        // Hash tree appended to a copy of the image.
        let appended = scratch.join("appended.squashfs");
        fs::copy(&data, &appended).unwrap();
        let offset = image.len().to_string();
        let appended_root =
            veritysetup_format(&appended, &appended, &[&format!("--hash-offset={offset}")]);
        Images {
            tree,
            data,
            hash,
            corrupt_block0,
            corrupt_deep,
            appended,
            root,
            wrong,
            offset,
            appended_root,
            deep_block: (deep + 10) / 4096,
        }
    }

    fn disks(&self) -> Vec<Disk> {
        [
            &self.data,
            &self.hash,
            &self.corrupt_block0,
            &self.corrupt_deep,
            &self.appended,
        ]
        .into_iter()
        .map(Disk::ro)
        .collect()
    }
}

/// Mount the API filesystems, load the modules, then `body`.
const PROLOGUE: &str = "busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
";

/// Boots the verity initramfs running `script` with every disk of `images`.
fn boot_script(scratch: &Scratch, images: &Images, script: &str) -> BootResult {
    boot(&BootSpec {
        initrd: Initrd::Path(verity_initramfs(scratch, script)),
        disks: images.disks(),
        timeout: Duration::from_secs(120),
        ..Default::default()
    })
}

/// A busybox initramfs running `body` (after [`PROLOGUE`] and the module loads) with the
/// tool at /bin/dm_verity.
fn verity_initramfs(scratch: &Scratch, body: &str) -> PathBuf {
    let tool = dm_verity_tool(scratch);
    let mut modules: Vec<String> = VIRTIO_BLK_MODULES.iter().map(|m| m.to_string()).collect();
    modules.push("squashfs".into());
    modules.extend(DM_VERITY_MODULES.iter().map(|m| m.to_string()));
    let initramfs = scratch.join("initramfs.cpio");
    BusyboxInitramfs {
        init_script: format!(
            "{PROLOGUE}{INSMOD_ALL}busybox mkdir -p /mnt\nV=/bin/dm_verity\n{body}"
        ),
        modules,
        files: vec![(tool, "/bin/dm_verity".into())],
    }
    .build(&initramfs);
    initramfs
}

#[test]
fn dm_verity_devices_made_by_our_ioctls_verify_and_fail_as_documented() {
    let scratch = Scratch::new("verity-dm");
    let images = Images::new(&scratch);
    let Images {
        tree,
        root,
        wrong,
        offset,
        appended_root,
        ..
    } = &images;
    let script = format!(
        r#"$V version
echo "CASE good"
$V open good /dev/vda /dev/vdb 0 {root} && busybox mount -t squashfs -o ro /dev/mapper/good /mnt && echo "READ good: $(busybox cat /mnt/hello)"
busybox grep /dev/mapper/good /proc/mounts | busybox sed 's/^/MOUNTS: /'
busybox md5sum /mnt/big | busybox sed 's/^/MD5 good: /'
$V status good
$V describe good
busybox umount /mnt; $V remove good
echo "CASE wrong"
$V open wrong /dev/vda /dev/vdb 0 {wrong}; echo "RC wrong=$?"
echo "LEFT wrong: $(busybox ls /sys/block | busybox grep -c dm-) $(busybox ls /dev/mapper)"
echo "CASE corrupt0"
$V open c0 /dev/vdc /dev/vdb 0 {root}; echo "RC corrupt0=$?"
echo "CASE deep"
$V open deep /dev/vdd /dev/vdb 0 {root} && busybox mount -t squashfs -o ro /dev/mapper/deep /mnt && echo "READ deep: $(busybox cat /mnt/hello)"
busybox cat /mnt/big >/dev/null 2>/deep.err; echo "RC deepread=$? $(busybox cat /deep.err)"
$V status deep
$V describe deep
busybox umount /mnt; $V remove deep
echo "CASE appended"
$V open app /dev/vde /dev/vde {offset} {appended_root} && busybox mount -t squashfs -o ro /dev/mapper/app /mnt && echo "READ appended: $(busybox cat /mnt/hello)"
busybox md5sum /mnt/big | busybox sed 's/^/MD5 appended: /'
busybox umount /mnt; $V remove app
echo "CASE auto"
$V open auto /dev/vde /dev/vde auto {appended_root} && busybox mount -t squashfs -o ro /dev/mapper/auto /mnt && echo "READ auto: $(busybox cat /mnt/hello)"
busybox umount /mnt; $V remove auto
$V describe good
echo "DM LEFT: $(busybox ls /sys/block | busybox grep -c dm-)"
busybox poweroff -f
"#
    );
    let result = boot_script(&scratch, &images, &script);

    assert_marker(&result, "VERITY: dm version 4.");
    // Right root hash: our device, mounted, files intact.
    assert_marker(&result, "VERITY: open good path=/dev/mapper/good dev=");
    assert_marker(&result, "READ good: verified hello");
    assert_marker(&result, "MOUNTS: /dev/mapper/good /mnt squashfs ro");
    let big_md5 = run(Command::new("md5sum").arg(tree.join("big")));
    let big_md5 = big_md5.split_whitespace().next().unwrap();
    assert_marker(&result, &format!("MD5 good: {big_md5}"));
    assert_marker(&result, "VERITY: status good V");
    assert_marker(
        &result,
        &format!("VERITY: describe good root={root} onerror=eio corrupted=false"),
    );
    assert_marker(&result, "VERITY: describe good none");
    assert_marker(&result, "VERITY: removed good");
    // Wrong root hash: refused at setup, by name, nothing left.
    assert_marker(
        &result,
        &format!("VERITY-ERROR: dm-verity wrong: the first block of /dev/vda does not verify against root hash {wrong} with the hash tree on /dev/vdb"),
    );
    assert_marker(&result, "RC wrong=1");
    assert_marker(&result, "LEFT wrong: 0 control");
    // Corrupt block 0: refused at setup.
    assert_marker(
        &result,
        "VERITY-ERROR: dm-verity c0: the first block of /dev/vdc does not verify",
    );
    assert_marker(&result, "RC corrupt0=1");
    // Corrupt deep block: mounts, the reader gets EIO, status C.
    assert_marker(&result, "READ deep: verified hello");
    assert_marker(&result, "RC deepread=1 cat: read error: Input/output error");
    assert_marker(&result, "VERITY: status deep C");
    assert_marker(
        &result,
        &format!("VERITY: describe deep root={root} onerror=eio corrupted=true"),
    );
    assert_marker(&result, "VERITY: removed deep");
    // Appended tree.
    assert_marker(&result, "READ appended: verified hello");
    assert_marker(&result, &format!("MD5 appended: {big_md5}"));
    assert_marker(&result, "VERITY: removed app");
    // The same tree found from the squashfs superblock (the extra-lower form).
    assert_marker(&result, "READ auto: verified hello");
    assert_marker(&result, "VERITY: removed auto");
    assert_marker(&result, "DM LEFT: 0");
    assert_exit(&result, Exit::PowerOff);
}

/// `ovl.verity_onerror=restart|panic` become the kernel's `restart_on_corruption` and
/// `panic_on_corruption`: reading the corrupted block restarts the machine, or panics it,
/// instead of returning EIO. One boot each.
#[test]
fn onerror_restart_and_panic_are_the_kernels_corruption_options() {
    let scratch = Scratch::new("verity-onerror");
    let images = Images::new(&scratch);
    for (mode, option, exit) in [
        ("restart", "restart_on_corruption", Exit::Reboot),
        ("panic", "panic_on_corruption", Exit::Panic),
    ] {
        let script = format!(
            r#"$V open deep /dev/vdd /dev/vdb 0 {root} {mode} && busybox mount -t squashfs -o ro /dev/mapper/deep /mnt && echo "READ deep: $(busybox cat /mnt/hello)"
busybox cat /mnt/big >/dev/null 2>/deep.err; echo "RC deepread=$? $(busybox cat /deep.err)"
busybox poweroff -f
"#,
            root = images.root
        );
        let result = boot_script(&scratch, &images, &script);
        assert_marker(&result, "VERITY: open deep path=/dev/mapper/deep");
        assert_marker(&result, &format!(" 1 {option}"));
        assert_marker(&result, "READ deep: verified hello");
        assert_marker(
            &result,
            &format!("data block {} is corrupted", images.deep_block),
        );
        assert_no_marker(&result, "RC deepread=");
        assert_exit(&result, exit);
    }
}
