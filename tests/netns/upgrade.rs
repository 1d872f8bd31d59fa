//! Firmware upgrades against the real kernel: lower identities of real
//! squashfs, erofs and ext4 images; the overlay's safe mount options; the
//! keep-list carry of a reset on a loop-mounted ext4 upper (with power cuts
//! after each durable step); the prune and shadowed comparisons.
//!
//! Needs root, util-linux, make_squashfs, mkfs.erofs, mkfs.ext4, and the loop,
//! squashfs, erofs, ext4 and overlay drivers. Each test re-runs itself in a
//! private mount namespace (see tests/support/namespace.rs).
//!
//! Run: `cargo test --test netns upgrade::`

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{in_private_mount_namespace, run, Ext4, Mounted};
use overlay_init::reset::{self, BootFlags, ResetOutcome, Step};
use overlay_init::sys::carry::LinkMode;
use overlay_init::sys::{lower_identity, upgrade_scan};
use overlay_init::upgrade::identity::{self, IdentityRecord, LowerChange, Recorded};
use overlay_init::upgrade::{self, keep};
use rustix::fd::AsFd;

const CMDLINE_RESET: BootFlags = BootFlags {
    cmdline_reset: true,
    failsafe: false,
};

fn reproducible_squashfs(tree: &Path, image: &Path) {
    run(Command::new("mksquashfs").arg(tree).arg(image).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-mkfs-time",
        "1700000000",
        "-all-time",
        "1700000000",
        "-all-root",
    ]));
}

fn reproducible_erofs(tree: &Path, image: &Path) {
    run(Command::new("mkfs.erofs")
        .args([
            "--quiet",
            "-T",
            "1700000000",
            "-U",
            "11111111-2222-4333-8444-555555555555",
            "--all-root",
        ])
        .arg(image)
        .arg(tree));
}

/// A lower tree: `/etc/version`, os-release (through an absolute symlink, as
/// systemd images have it), an app config, a tool, and `extra` more files.
fn lower_tree(dir: &Path, version: &str, tool: &str, extra: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(format!("tree-{version}"));
    let _ = fs::remove_dir_all(&tree);
    for (path, content) in [
        ("etc/version", version.to_string()),
        ("etc/app.conf", "factory=1\n".to_string()),
        ("etc/old", format!("old in {version}\n")),
        (
            "usr/lib/os-release",
            format!("NAME=demo\nVERSION_ID={version}\nBUILD_ID=\"b-{version}\"\n"),
        ),
        ("usr/bin/tool", tool.to_string()),
    ]
    .into_iter()
    .chain(extra.iter().map(|(p, c)| (*p, c.to_string())))
    {
        let p = tree.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
    }
    std::os::unix::fs::symlink("/usr/lib/os-release", tree.join("etc/os-release")).unwrap();
    tree
}

fn identify(image: &Path, fstype: &str, mnt: &Path) -> identity::LowerIdentity {
    let m = Mounted::loop_image(image, fstype, mnt);
    let (id, took) = lower_identity::identify(image, &m.target).unwrap();
    eprintln!(
        "{fstype} {}: {} ({} bytes hashed in {took:?})",
        image.display(),
        id.describe(),
        id.meta_bytes
    );
    m.unmount();
    id
}

fn record(id: &identity::LowerIdentity) -> IdentityRecord {
    IdentityRecord {
        main: id.clone(),
        extra: vec![],
    }
}

/// Builds of the same tree are equal; other content differs; going back to
/// the first build (a rollback) is a change; os-release is read inside the
/// image (its `/etc/os-release` is an absolute symlink).
fn identity_case(scratch: &Path, fstype: &str, build: fn(&Path, &Path)) {
    let v1 = lower_tree(scratch, "1", "tool v1\n", &[]);
    let v2 = lower_tree(scratch, "2", "tool v2, longer\n", &[("etc/new-in-2", "x")]);
    let (a, a_again, b) = (
        scratch.join(format!("a.{fstype}")),
        scratch.join(format!("a-again.{fstype}")),
        scratch.join(format!("b.{fstype}")),
    );
    build(&v1, &a);
    build(&v1, &a_again);
    build(&v2, &b);
    let mnt = scratch.join("mnt");
    let id_a = identify(&a, fstype, &mnt);
    let id_a2 = identify(&a_again, fstype, &mnt);
    let id_a_twice = identify(&a, fstype, &mnt);
    let id_b = identify(&b, fstype, &mnt);
    assert_eq!(id_a.fstype, fstype);
    assert_eq!(id_a.version.version_id.as_deref(), Some("1"));
    assert_eq!(id_a.version.build_id.as_deref(), Some("b-1"));
    assert_eq!(id_a, id_a_twice, "the same image read twice");
    assert_eq!(id_a, id_a2, "two reproducible builds of the same tree");
    assert_ne!(
        id_a.meta_sha256, id_b.meta_sha256,
        "different content, different metadata hash"
    );
    assert!(id_a.meta_bytes > 0 && id_a.meta_bytes < fs::metadata(&a).unwrap().len());
    // The record round-trips through the upper's state directory.
    let upper_root = scratch.join(format!("upper-{fstype}"));
    fs::create_dir_all(&upper_root).unwrap();
    assert_eq!(
        upgrade::read_record(&upper_root).unwrap(),
        Recorded::Missing
    );
    upgrade::write_record(&upper_root, &record(&id_a)).unwrap();
    let recorded = upgrade::read_record(&upper_root).unwrap();
    assert_eq!(
        identity::compare(&recorded, &record(&id_a)),
        LowerChange::Unchanged
    );
    assert!(matches!(
        identity::compare(&recorded, &record(&id_b)),
        LowerChange::Changed { .. }
    ));
    upgrade::write_record(&upper_root, &record(&id_b)).unwrap();
    let recorded = upgrade::read_record(&upper_root).unwrap();
    match identity::compare(&recorded, &record(&id_a)) {
        LowerChange::Changed { layers, old } => {
            assert_eq!(layers, ["main"]);
            assert_eq!(old.main.version.version_id.as_deref(), Some("2"));
        }
        other => panic!("a rollback must be a change: {other:?}"),
    }
    // A torn record is reported as unreadable, not taken for another identity.
    let path = upper_root.join(".overlay-init/lower-identity");
    let text = fs::read(&path).unwrap();
    fs::write(&path, &text[..text.len() / 2]).unwrap();
    assert!(matches!(
        upgrade::read_record(&upper_root).unwrap(),
        Recorded::Corrupt(_)
    ));
}

/// Two builds whose only difference is one name of the same length: the
/// superblocks are alike, so only hashing the tables (squashfs) or walking the
/// inodes and directories (erofs) tells them apart.
fn rename_only_case(scratch: &Path, fstype: &str, build: fn(&Path, &Path)) {
    let one = lower_tree(scratch, "1", "tool\n", &[("srv/name-a", "same")]);
    let (a, b) = (scratch.join("na.img"), scratch.join("nb.img"));
    build(&one, &a);
    fs::rename(one.join("srv/name-a"), one.join("srv/name-b")).unwrap();
    build(&one, &b);
    let mnt = scratch.join("mnt");
    let (id_a, id_b) = (identify(&a, fstype, &mnt), identify(&b, fstype, &mnt));
    // The superblock: squashfs's 96 bytes at 0, erofs's 128 at 1024.
    let (sb_at, sb_len) = if fstype == "squashfs" {
        (0, 96)
    } else {
        (1024, 128)
    };
    let mut sb_a = vec![0u8; sb_len];
    let mut sb_b = vec![0u8; sb_len];
    use std::os::unix::fs::FileExt;
    fs::File::open(&a)
        .unwrap()
        .read_exact_at(&mut sb_a, sb_at)
        .unwrap();
    fs::File::open(&b)
        .unwrap()
        .read_exact_at(&mut sb_b, sb_at)
        .unwrap();
    if fstype == "erofs" {
        // The erofs superblock checksum covers the rest of block 0 (inodes,
        // here): the identity does not hash it, so neither does this check.
        sb_a[4..8].fill(0);
        sb_b[4..8].fill(0);
    }
    assert_eq!(sb_a, sb_b, "the superblocks alone cannot tell these apart");
    assert_ne!(
        id_a.meta_sha256, id_b.meta_sha256,
        "a renamed file changes the metadata hash"
    );
}

#[test]
fn squashfs_identity_sees_a_rename() {
    in_private_mount_namespace("squashfs_identity_sees_a_rename", |scratch| {
        rename_only_case(scratch, "squashfs", reproducible_squashfs);
    });
}

#[test]
fn erofs_identity_sees_a_rename() {
    in_private_mount_namespace("erofs_identity_sees_a_rename", |scratch| {
        rename_only_case(scratch, "erofs", reproducible_erofs);
    });
}

#[test]
fn squashfs_identity_tells_builds_apart() {
    in_private_mount_namespace("squashfs_identity_tells_builds_apart", |scratch| {
        identity_case(scratch, "squashfs", reproducible_squashfs);
    });
}

#[test]
fn erofs_identity_tells_builds_apart() {
    in_private_mount_namespace("erofs_identity_tells_builds_apart", |scratch| {
        identity_case(scratch, "erofs", reproducible_erofs);
    });
}

#[test]
fn ext4_identity_tells_builds_apart() {
    in_private_mount_namespace("ext4_identity_tells_builds_apart", |scratch| {
        fn build(tree: &Path, image: &Path) {
            // mke2fs takes its clock from E2FSPROGS_FAKE_TIME and its hash seed from -E.
            let _ = fs::remove_file(image);
            run(Command::new("mkfs.ext4")
                .env("E2FSPROGS_FAKE_TIME", "1700000000")
                .args(["-q", "-F", "-U", "11111111-2222-4333-8444-555555555555"])
                .args(["-E", "hash_seed=11111111-2222-4333-8444-666666666666"])
                .arg("-d")
                .arg(tree)
                .arg(image)
                .arg("8M"));
        }
        identity_case(scratch, "ext4", build);
    });
}

// ---- the overlay's mount options -------------------------------------------

fn overlay_param(name: &str) -> Option<String> {
    fs::read_to_string(format!("/sys/module/overlay/parameters/{name}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The overlay is mounted with index, metacopy, redirect_dir and xino off.
/// The kernel shows an option in /proc/mounts only when it differs from the
/// module default, so: each one is listed as `=off`, or the module default is
/// off; and the effects hold (no `work/index`, a lower directory cannot be
/// renamed: EXDEV without redirect_dir). With `OVL_TEST_FLIP_OVERLAY_DEFAULTS=1`
/// the test turns the module defaults on for the duration of its mount, so
/// that /proc/mounts must list all four (this changes a global module
/// parameter for a moment; off by default on a shared machine).
#[test]
fn overlay_is_mounted_with_safe_options() {
    in_private_mount_namespace("overlay_is_mounted_with_safe_options", |scratch| {
        let flip = std::env::var("OVL_TEST_FLIP_OVERLAY_DEFAULTS").as_deref() == Ok("1");
        let params = ["index", "metacopy", "redirect_dir", "xino_auto"];
        let saved: Vec<_> = params.iter().map(|p| overlay_param(p)).collect();
        struct Restore(Vec<(&'static str, Option<String>)>);
        impl Drop for Restore {
            fn drop(&mut self) {
                for (p, v) in &self.0 {
                    if let Some(v) = v {
                        let _ = fs::write(format!("/sys/module/overlay/parameters/{p}"), v);
                    }
                }
            }
        }
        let _restore = Restore(params.iter().copied().zip(saved).collect());
        let tree = lower_tree(scratch, "1", "tool\n", &[("dir/file", "x")]);
        let image = scratch.join("lower.sqsh");
        reproducible_squashfs(&tree, &image);
        let lower = Mounted::loop_image(&image, "squashfs", &scratch.join("lower"));
        let upper_fs = Mounted::tmpfs(&scratch.join("upperfs"));
        let (u, w) = overlay_init::overlay::prepare_upper_dirs(&upper_fs.target).unwrap();
        if flip {
            for p in params {
                fs::write(format!("/sys/module/overlay/parameters/{p}"), "Y").unwrap();
            }
        }
        let root = scratch.join("root");
        fs::create_dir_all(&root).unwrap();
        overlay_init::overlay::mount_overlay(std::slice::from_ref(&lower.target), &u, &w, &root)
            .unwrap();
        // The kernel compares with the module defaults when it prints options:
        // read /proc/mounts before restoring them.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        drop(_restore);
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(root.to_str().unwrap()))
            .expect("the overlay is in /proc/self/mounts")
            .to_string();
        eprintln!("{line}");
        for (option, param) in [
            ("index", "index"),
            ("metacopy", "metacopy"),
            ("redirect_dir", "redirect_dir"),
            ("xino", "xino_auto"),
        ] {
            // The kernel turns redirect_dir=off into `follow` (or `nofollow`,
            // after redirect_always_follow): no redirect is ever created.
            let listed = line.contains(&format!(",{option}=off"))
                || (option == "redirect_dir"
                    && (line.contains(",redirect_dir=follow")
                        || line.contains(",redirect_dir=nofollow")));
            let default_off = !flip && overlay_param(param).as_deref() == Some("N");
            assert!(
                listed || default_off,
                "{option}=off is neither in /proc/mounts nor the module default: {line}"
            );
            if flip {
                assert!(
                    listed,
                    "with the defaults on, {option}=off must be listed: {line}"
                );
            }
        }
        assert!(!w.join("index").exists(), "index=off: no work/index");
        let err = fs::rename(root.join("dir"), root.join("dir2")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc_exdev()),
            "redirect_dir=off: {err}"
        );
    });
}

fn libc_exdev() -> i32 {
    rustix::io::Errno::XDEV.raw_os_error()
}

// ---- keep-list carry -------------------------------------------------------

/// One entry of a tree listing: kind, mode, owner, xattrs, content or target.
type Listing = BTreeMap<String, String>;

fn listing(root: &Path) -> Listing {
    fn walk(root: &Path, dir: &Path, out: &mut Listing) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                walk(root, &path, out);
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                format!(
                    "file {:?}",
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                )
            } else if ft.is_char_device() {
                format!("char {}", meta.rdev())
            } else {
                "other".to_string()
            };
            let xattrs = xattrs_of(&path);
            let mtime = if ft.is_dir() {
                String::new()
            } else {
                format!(" mtime {}", meta.mtime())
            };
            out.insert(
                rel,
                format!(
                    "{kind} mode {:o} owner {}:{}{mtime} xattrs {xattrs:?}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid()
                ),
            );
        }
    }
    let mut out = Listing::new();
    walk(root, root, &mut out);
    out
}

fn xattrs_of(path: &Path) -> Vec<(String, String)> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut buf[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut v[..]).unwrap_or(0);
        out.push((name, String::from_utf8_lossy(&v[..len]).into_owned()));
    }
    out.sort();
    out
}

struct World {
    scratch: PathBuf,
    upper_image: PathBuf,
    upper: Option<Mounted>,
    lower: Mounted,
}

impl World {
    fn new(scratch: &Path, lower_image: &Path) -> World {
        let upper_image = scratch.join("upper.ext4");
        Ext4::mib(64).write_to(&upper_image);
        let lower = Mounted::loop_image(lower_image, "squashfs", &scratch.join("lower"));
        let upper = Mounted::loop_image(&upper_image, "ext4", &scratch.join("overlay"));
        overlay_init::overlay::prepare_upper_dirs(&upper.target).unwrap();
        fs::create_dir_all(scratch.join("outside")).unwrap();
        fs::write(scratch.join("outside/secret"), "outside\n").unwrap();
        World {
            scratch: scratch.to_owned(),
            upper_image,
            upper: Some(upper),
            lower,
        }
    }

    fn upper_root(&self) -> PathBuf {
        self.scratch.join("overlay")
    }

    fn overlay(&self, target: &str) -> Mounted {
        let root = self.upper_root();
        Mounted::overlay(
            &self.lower.target,
            &reset::upperdir(&root),
            &reset::workdir(&root),
            &self.scratch.join(target),
        )
    }

    fn lower_dev(&self) -> Option<u64> {
        Some(fs::metadata(&self.lower.target).unwrap().dev())
    }
}

fn set_owner(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Boot 1 of the story, through the overlay, plus awkward entries.
fn use_the_system(world: &World) {
    let m = world.overlay("merged");
    let r = &m.target;
    fs::write(r.join("etc/app.conf"), "edited=1\n").unwrap();
    fs::set_permissions(r.join("etc/app.conf"), fs::Permissions::from_mode(0o640)).unwrap();
    set_owner(&r.join("etc/app.conf"), 1234, 5678);
    rustix::fs::setxattr(
        r.join("etc/app.conf"),
        "user.note",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::remove_file(r.join("etc/old")).unwrap(); // a whiteout
                                                 // touch: a copy-up with the same content.
    let tool = fs::OpenOptions::new()
        .append(true)
        .open(r.join("usr/bin/tool"))
        .unwrap();
    tool.set_modified(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
    )
    .unwrap();
    drop(tool);
    fs::create_dir_all(r.join("root/.ssh")).unwrap();
    fs::set_permissions(r.join("root/.ssh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(r.join("root/.ssh/authorized_keys"), "ssh-ed25519 AAAA\n").unwrap();
    fs::set_permissions(
        r.join("root/.ssh/authorized_keys"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    set_owner(&r.join("root/.ssh/authorized_keys"), 1000, 1000);
    fs::write(r.join("root/.secret"), "not kept\n").unwrap();
    fs::write(r.join(".dotfile-at-root"), "not kept\n").unwrap();
    // An opaque directory that is kept, and one that is only a parent.
    fs::create_dir_all(r.join("srv/data")).unwrap();
    fs::write(r.join("srv/data/db"), "db").unwrap();
    std::os::unix::fs::symlink(world.scratch.join("outside/secret"), r.join("etc/link-out"))
        .unwrap();
    std::os::unix::fs::symlink(world.scratch.join("outside"), r.join("etc/dir-link-out")).unwrap();
    fs::write(r.join("etc/overlay-init-keep-me"), "x").unwrap();
    m.unmount();
    // Make the etc/ copy in the upper opaque, as `rm -rf /etc; mkdir /etc` would:
    // a parent of kept entries; its opaque marker must not be carried.
    let upper_etc = reset::upperdir(&world.upper_root()).join("etc");
    rustix::fs::setxattr(
        &upper_etc,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let upper_srv = reset::upperdir(&world.upper_root()).join("srv/data");
    rustix::fs::setxattr(
        &upper_srv,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    run(Command::new("sync").arg("-f").arg(world.upper_root()));
}

const KEEP_LIST: &[u8] = b"# what survives a reset\n/etc/app.conf\n/etc/old\n/root/.ssh\n/etc/link-out\n/etc/dir-link-out\n/srv/*\nnot/absolute\n";

fn v1_lower(scratch: &Path) -> PathBuf {
    let tree = lower_tree(scratch, "1", "tool v1\n", &[("root/.profile", "lower\n")]);
    let image = scratch.join("v1.sqsh");
    reproducible_squashfs(&tree, &image);
    image
}

/// The kept entries as the old upper had them.
fn kept_part(old: &Listing) -> Listing {
    old.iter()
        .filter(|(k, _)| {
            [
                "etc/app.conf",
                "etc/old",
                "root/.ssh",
                "etc/link-out",
                "etc/dir-link-out",
                "srv/data",
            ]
            .iter()
            .any(|p| k.as_str() == *p || k.starts_with(&format!("{p}/")))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn check_carried(upper: &Path, old: &Listing) {
    let new = listing(upper);
    for (k, v) in kept_part(old) {
        assert_eq!(
            new.get(&k),
            Some(&v),
            "{k} carried with mode, owner, xattrs and times"
        );
    }
    assert!(
        new["etc/old"].starts_with("char 0 "),
        "the whiteout stays a whiteout: {}",
        new["etc/old"]
    );
    assert!(
        new["srv/data"].contains("trusted.overlay.opaque"),
        "a kept opaque dir stays opaque"
    );
    assert!(
        !new["etc"].contains("trusted.overlay.opaque"),
        "a parent is not made opaque: {}",
        new["etc"]
    );
    assert_eq!(
        new["etc"].split(" xattrs").next(),
        old["etc"].split(" xattrs").next(),
        "parent mode and owner"
    );
    for gone in [
        "root/.secret",
        ".dotfile-at-root",
        "usr",
        "usr/bin/tool",
        "etc/overlay-init-keep-me",
    ] {
        assert!(
            !new.contains_key(gone),
            "{gone} was not kept but is in the new upper"
        );
    }
    let expected: Vec<_> = kept_part(old)
        .keys()
        .cloned()
        .chain(["etc", "root", "srv"].map(String::from))
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(
        new.keys().cloned().collect::<Vec<_>>(),
        expected,
        "nothing else is carried"
    );
}

fn carry_case(scratch: &Path, link: LinkMode) {
    let image = v1_lower(scratch);
    let world = World::new(scratch, &image);
    use_the_system(&world);
    let upper_root = world.upper_root();
    let old = listing(&reset::upperdir(&upper_root));
    let keep = keep::parse(KEEP_LIST);
    assert_eq!(keep.bad.len(), 1);
    assert_eq!(keep.bad[0].line, 8);
    let outcome = reset::apply_pending_keeping(
        &upper_root,
        CMDLINE_RESET,
        world.lower_dev(),
        &keep,
        link,
        &mut |_| Ok(()),
    )
    .unwrap();
    let ResetOutcome::Done { steps, trash, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        Step::ALL_KEEPING
    );
    check_carried(&reset::upperdir(&upper_root), &old);
    // The symlinks' targets outside were never followed nor copied.
    assert_eq!(
        fs::read_to_string(scratch.join("outside/secret")).unwrap(),
        "outside\n"
    );
    assert_eq!(fs::read_dir(scratch.join("outside")).unwrap().count(), 1);
    // Hard links share the old inode; copies do not.
    let new_conf = fs::metadata(reset::upperdir(&upper_root).join("etc/app.conf")).unwrap();
    let old_conf = fs::metadata(trash.join("upper/etc/app.conf")).unwrap();
    assert_eq!(
        new_conf.ino() == old_conf.ino(),
        link == LinkMode::HardLinkWherePossible
    );
    // The merged view: kept edits on top of the lower, everything else factory.
    let m = world.overlay("merged-after");
    assert_eq!(
        fs::read_to_string(m.target.join("etc/app.conf")).unwrap(),
        "edited=1\n"
    );
    assert!(!m.target.join("etc/old").exists());
    assert_eq!(
        fs::read_to_string(m.target.join("usr/bin/tool")).unwrap(),
        "tool v1\n"
    );
    assert_eq!(
        fs::read_to_string(m.target.join("etc/version")).unwrap(),
        "1"
    );
    assert!(
        m.target.join("etc/os-release").exists(),
        "etc/ is not opaque after the reset"
    );
    assert!(!m.target.join("root/.secret").exists());
    assert_eq!(
        fs::read_to_string(m.target.join("root/.profile")).unwrap(),
        "lower\n"
    );
    assert_eq!(
        fs::read_to_string(m.target.join("srv/data/db")).unwrap(),
        "db"
    );
    // A third boot persists again.
    fs::write(m.target.join("etc/third"), "3").unwrap();
    m.unmount();
    assert!(reset::upperdir(&upper_root).join("etc/third").exists());
    drop(world);
}

#[test]
fn reset_carries_the_keep_list_by_hard_link() {
    in_private_mount_namespace("reset_carries_the_keep_list_by_hard_link", |scratch| {
        carry_case(scratch, LinkMode::HardLinkWherePossible);
    });
}

#[test]
fn reset_carries_the_keep_list_by_copy() {
    in_private_mount_namespace("reset_carries_the_keep_list_by_copy", |scratch| {
        carry_case(scratch, LinkMode::Copy);
    });
}

/// A power cut after each durable step of a reset with a keep-list leaves the
/// old upper with the request pending, or the new upper with every kept entry.
#[test]
fn power_cut_during_reset_with_keep_list_leaves_old_or_kept() {
    in_private_mount_namespace(
        "power_cut_during_reset_with_keep_list_leaves_old_or_kept",
        |scratch| {
            let image = v1_lower(scratch);
            let mut world = World::new(scratch, &image);
            use_the_system(&world);
            let upper_root = world.upper_root();
            let old = listing(&reset::upperdir(&upper_root));
            let keep = keep::parse(KEEP_LIST);
            let mut snapshots = Vec::new();
            let upper_image = world.upper_image.clone();
            let mut hook = |step: Step| {
                let snapshot = scratch.join(format!("cut-after-{}.ext4", step.name()));
                fs::copy(&upper_image, &snapshot).unwrap();
                snapshots.push((step, snapshot));
                Ok(())
            };
            reset::apply_pending_keeping(
                &upper_root,
                CMDLINE_RESET,
                world.lower_dev(),
                &keep,
                LinkMode::HardLinkWherePossible,
                &mut hook,
            )
            .unwrap();
            world.upper.take().unwrap().unmount();
            assert_eq!(
                snapshots.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                Step::ALL_KEEPING
            );
            for (step, snapshot) in snapshots {
                let m = Mounted::loop_image(&snapshot, "ext4", &scratch.join("cut"));
                let pending = m.target.join(".overlay-init/reset-request").exists();
                let upper = listing(&reset::upperdir(&m.target));
                let new_state = matches!(step, Step::SwapUpper | Step::ClearRequest);
                if new_state {
                    check_carried(&reset::upperdir(&m.target), &old);
                    assert_eq!(pending, step == Step::SwapUpper, "after {}", step.name());
                } else {
                    assert_eq!(
                        upper,
                        old,
                        "after {}: the old upper, untouched",
                        step.name()
                    );
                    assert!(pending, "after {}: the reset is still pending", step.name());
                    // The next boot finishes it, keeping the list.
                    reset::apply_pending_keeping(
                        &m.target,
                        BootFlags {
                            cmdline_reset: false,
                            failsafe: false,
                        },
                        world.lower_dev(),
                        &keep,
                        LinkMode::HardLinkWherePossible,
                        &mut |_| Ok(()),
                    )
                    .unwrap();
                    check_carried(&reset::upperdir(&m.target), &old);
                }
                m.unmount();
            }
        },
    );
}

// ---- prune and shadowed ----------------------------------------------------

fn v2_lower(scratch: &Path, tool: &str) -> PathBuf {
    // v2: /etc/version 2, a new tool, /etc/old changed, /etc/gone dropped.
    let tree = lower_tree(scratch, "2", tool, &[]);
    fs::write(tree.join("etc/old"), "changed in 2\n").unwrap();
    let image = scratch.join(format!("v2-{}.sqsh", tool.len()));
    reproducible_squashfs(&tree, &image);
    image
}

fn upgrade_world(scratch: &Path) -> World {
    let tree = lower_tree(scratch, "1", "tool v1\n", &[("etc/gone", "only in 1\n")]);
    let image = scratch.join("v1.sqsh");
    reproducible_squashfs(&tree, &image);
    let world = World::new(scratch, &image);
    let m = world.overlay("merged");
    let r = &m.target;
    fs::write(r.join("etc/app.conf"), "edited=1\n").unwrap();
    fs::remove_file(r.join("etc/old")).unwrap();
    fs::remove_file(r.join("etc/gone")).unwrap();
    let tool = fs::OpenOptions::new()
        .append(true)
        .open(r.join("usr/bin/tool"))
        .unwrap();
    tool.set_modified(std::time::SystemTime::now()).unwrap();
    drop(tool);
    fs::write(r.join("etc/mine"), "only in the upper\n").unwrap();
    // A copy-up whose mode differs from the lower's: never pruned.
    fs::set_permissions(r.join("etc/version"), fs::Permissions::from_mode(0o600)).unwrap();
    m.unmount();
    world
}

fn paths(list: &[Vec<u8>]) -> Vec<String> {
    list.iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

#[test]
fn keep_policy_lists_what_shadows_the_new_lower() {
    in_private_mount_namespace("keep_policy_lists_what_shadows_the_new_lower", |scratch| {
        let world = upgrade_world(scratch);
        let v2 = Mounted::loop_image(
            &v2_lower(scratch, "tool v2\n"),
            "squashfs",
            &scratch.join("v2"),
        );
        let upper =
            overlay_init::sys::dirfd::open_dir(&reset::upperdir(&world.upper_root())).unwrap();
        let lower = overlay_init::sys::dirfd::open_dir(&v2.target).unwrap();
        let list = upgrade_scan::list_shadowed(upper.as_fd(), &[lower.as_fd()]).unwrap();
        assert_eq!(
            upgrade_scan::render_shadowed(&list),
            "file /etc/app.conf\nwhiteout /etc/old\nfile /etc/version\nfile /usr/bin/tool\n",
            "/etc/gone is no longer in the lower; /etc/mine never was"
        );
    });
}

#[test]
fn prune_removes_copies_identical_to_the_new_lower_and_stale_whiteouts() {
    in_private_mount_namespace(
        "prune_removes_copies_identical_to_the_new_lower_and_stale_whiteouts",
        |scratch| {
            let world = upgrade_world(scratch);
            let upper_dir = reset::upperdir(&world.upper_root());
            // Against a v2 whose tool differs, the touched copy stays (it shadows v2's).
            let v2 = Mounted::loop_image(
                &v2_lower(scratch, "tool v2\n"),
                "squashfs",
                &scratch.join("v2"),
            );
            let upper = overlay_init::sys::dirfd::open_dir(&upper_dir).unwrap();
            let lower = overlay_init::sys::dirfd::open_dir(&v2.target).unwrap();
            let report = upgrade_scan::prune(upper.as_fd(), &[lower.as_fd()]).unwrap();
            assert_eq!(paths(&report.identical_removed), Vec::<String>::new());
            assert_eq!(paths(&report.stale_whiteouts_removed), ["/etc/gone"]);
            assert!(upper_dir.join("usr/bin/tool").exists());
            drop((lower, v2));
            // Against a v2 whose tool is v1's content: the touched copy only pins old metadata.
            let v2same = Mounted::loop_image(
                &v2_lower(scratch, "tool v1\n"),
                "squashfs",
                &scratch.join("v2same"),
            );
            let lower = overlay_init::sys::dirfd::open_dir(&v2same.target).unwrap();
            let report = upgrade_scan::prune(upper.as_fd(), &[lower.as_fd()]).unwrap();
            assert_eq!(paths(&report.identical_removed), ["/usr/bin/tool"]);
            assert!(!upper_dir.join("usr/bin/tool").exists());
            assert!(upper_dir.join("etc/version").exists(), "mode differs: kept");
            assert!(
                upper_dir.join("etc/app.conf").exists(),
                "content differs: kept"
            );
            assert!(
                upper_dir.join("etc/mine").exists(),
                "no lower counterpart: kept"
            );
            assert!(
                upper_dir.join("etc/old").exists(),
                "whiteout of a path v2 has: kept"
            );
            assert_eq!(
                upgrade_scan::render_shadowed(&report.shadowed),
                "file /etc/app.conf\nwhiteout /etc/old\nfile /etc/version\n"
            );
            // The merged view is the same as before the prune, but for the dropped copy's mtime.
            let m = Mounted::overlay(
                &v2same.target,
                &upper_dir,
                &reset::workdir(&world.upper_root()),
                &scratch.join("m"),
            );
            assert_eq!(
                fs::read_to_string(m.target.join("usr/bin/tool")).unwrap(),
                "tool v1\n"
            );
            assert!(!m.target.join("etc/gone").exists() && !m.target.join("etc/old").exists());
        },
    );
}

#[test]
fn keep_list_is_read_from_the_merged_view() {
    in_private_mount_namespace("keep_list_is_read_from_the_merged_view", |scratch| {
        let tree = lower_tree(
            scratch,
            "1",
            "t",
            &[("etc/overlay-init/keep", "/from/lower\nrelative/path\n")],
        );
        let image = scratch.join("k.sqsh");
        reproducible_squashfs(&tree, &image);
        let world = World::new(scratch, &image);
        let upper_dir = reset::upperdir(&world.upper_root());
        let read = || {
            let u = overlay_init::sys::dirfd::open_dir(&upper_dir).unwrap();
            let l = overlay_init::sys::dirfd::open_dir(&world.lower.target).unwrap();
            upgrade_scan::read_merged_file(u.as_fd(), &[l.as_fd()], b"etc/overlay-init/keep")
                .unwrap()
        };
        let from_lower = read().unwrap();
        assert_eq!(from_lower, b"/from/lower\nrelative/path\n");
        let parsed = keep::parse(&from_lower);
        assert_eq!(parsed.patterns.len(), 1);
        assert_eq!(parsed.bad.len(), 1);
        assert_eq!(parsed.bad[0].line, 2, "bad lines are reported by number");
        assert!(parsed.bad[0]
            .to_string()
            .starts_with("keep-list line 2: \"relative/path\""));
        let m = world.overlay("merged");
        fs::write(m.target.join("etc/overlay-init/keep"), "/from/upper\n").unwrap();
        m.unmount();
        assert_eq!(read().as_deref(), Some(&b"/from/upper\n"[..]));
        let m = world.overlay("merged");
        fs::remove_file(m.target.join("etc/overlay-init/keep")).unwrap();
        m.unmount();
        assert_eq!(read(), None, "deleted in the upper (a whiteout)");
    });
}

/// The carry never enters another mount under a kept directory, whether
/// another filesystem or a bind mount of the same one: the mount point is
/// reported and left out, the rest of the kept directory is carried.
#[test]
fn carry_never_crosses_a_mount() {
    in_private_mount_namespace("carry_never_crosses_a_mount", |scratch| {
        let image = v1_lower(scratch);
        let world = World::new(scratch, &image);
        let upper_dir = reset::upperdir(&world.upper_root());
        let kept = upper_dir.join("root/.ssh");
        fs::create_dir_all(kept.join("other-fs")).unwrap();
        fs::create_dir_all(kept.join("same-fs")).unwrap();
        fs::write(kept.join("authorized_keys"), "key\n").unwrap();
        let _tmpfs = Mounted::tmpfs(&kept.join("other-fs"));
        fs::write(kept.join("other-fs/foreign"), "must not be carried").unwrap();
        let source = world.upper_root().join("bind-source");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("bound"), "must not be carried").unwrap();
        let _bind = Mounted::bind(&source, &kept.join("same-fs"));
        let fresh = world.upper_root().join("fresh");
        fs::create_dir_all(&fresh).unwrap();
        let old = overlay_init::sys::dirfd::open_dir(&upper_dir).unwrap();
        let new = overlay_init::sys::dirfd::open_dir(&fresh).unwrap();
        let report = overlay_init::sys::carry::carry(
            old.as_fd(),
            new.as_fd(),
            &keep::parse(b"/root/.ssh\n"),
            LinkMode::HardLinkWherePossible,
        )
        .unwrap();
        let mut skipped: Vec<_> = report
            .mount_points_skipped
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        skipped.sort();
        assert_eq!(skipped, ["root/.ssh/other-fs", "root/.ssh/same-fs"]);
        assert_eq!(
            fs::read_to_string(fresh.join("root/.ssh/authorized_keys")).unwrap(),
            "key\n"
        );
        assert!(!fresh.join("root/.ssh/other-fs").exists());
        assert!(!fresh.join("root/.ssh/same-fs").exists());
        assert_eq!(report.linked, 1);
    });
}

const REQUEST_ONLY: BootFlags = BootFlags {
    cmdline_reset: false,
    failsafe: false,
};

/// The boot's reset step (`boot::upgrade::apply_reset`) on the world.
fn boot_reset(world: &World) -> anyhow::Result<ResetOutcome> {
    overlay_init::boot::upgrade::apply_reset(
        &world.upper_root(),
        REQUEST_ONLY,
        world.lower_dev().unwrap(),
        std::slice::from_ref(&world.lower.target),
    )
}

/// A keep-list that cannot be carried (here: a kept tree deeper than the
/// carry goes) fails the reset before the swap, is counted in the request,
/// and after `MAX_CARRY_FAILURES` boots the reset runs without the keep-list:
/// it never fails every boot forever.
#[test]
fn carry_failures_are_counted_then_the_reset_keeps_nothing() {
    in_private_mount_namespace(
        "carry_failures_are_counted_then_the_reset_keeps_nothing",
        |scratch| {
            let world = World::new(scratch, &v1_lower(scratch));
            let upper = reset::upperdir(&world.upper_root());
            fs::create_dir_all(upper.join("etc/overlay-init")).unwrap();
            fs::write(
                upper.join("etc/overlay-init/keep"),
                "/deep\n/etc/app.conf\n",
            )
            .unwrap();
            fs::write(upper.join("etc/app.conf"), "edited\n").unwrap();
            fs::write(upper.join("secret"), "s\n").unwrap();
            let mut deep = upper.join("deep");
            for _ in 0..sys_carry_max_depth() + 4 {
                deep.push("d");
            }
            fs::create_dir_all(&deep).unwrap();
            reset::request(&world.upper_root()).unwrap();
            for failure in 1..=reset::MAX_CARRY_FAILURES {
                let e = format!("{:#}", boot_reset(&world).unwrap_err());
                assert!(e.contains(&format!("(failure {failure})")), "{e}");
                let pending = reset::pending_request(&world.upper_root())
                    .unwrap()
                    .unwrap();
                assert_eq!(pending.carry_failures, failure);
                assert_eq!(pending.requested_by.as_deref(), Some("cli"));
                assert!(upper.join("secret").exists(), "the old upper is intact");
            }
            let outcome = boot_reset(&world).unwrap();
            assert!(matches!(outcome, ResetOutcome::Done { .. }), "{outcome:?}");
            let upper = reset::upperdir(&world.upper_root());
            assert_eq!(fs::read_dir(&upper).unwrap().count(), 0, "nothing kept");
            assert_eq!(reset::pending_request(&world.upper_root()).unwrap(), None);
        },
    );
}

fn sys_carry_max_depth() -> usize {
    overlay_init::sys::carry::MAX_DEPTH
}

/// Every reset carries the keep-list of the merged view (the upper's copy
/// wins over the lower's); `overlay-init reset --all` carries nothing.
#[test]
fn reset_request_carries_the_keep_list_and_reset_all_does_not() {
    in_private_mount_namespace(
        "reset_request_carries_the_keep_list_and_reset_all_does_not",
        |scratch| {
            let world = World::new(scratch, &v1_lower(scratch));
            let root = world.upper_root();
            let upper = reset::upperdir(&root);
            fs::create_dir_all(upper.join("etc/overlay-init")).unwrap();
            fs::write(upper.join("etc/overlay-init/keep"), "/etc/app.conf\n").unwrap();
            fs::write(upper.join("etc/app.conf"), "edited\n").unwrap();
            fs::write(upper.join("secret"), "s\n").unwrap();
            reset::request(&root).unwrap();
            boot_reset(&world).unwrap();
            let upper = reset::upperdir(&root);
            assert_eq!(
                fs::read_to_string(upper.join("etc/app.conf")).unwrap(),
                "edited\n"
            );
            assert!(!upper.join("secret").exists());
            // The keep-list itself was not in the list: the lower has none, so
            // the next reset keeps nothing...
            fs::create_dir_all(upper.join("etc/overlay-init")).unwrap();
            fs::write(upper.join("etc/overlay-init/keep"), "/etc/app.conf\n").unwrap();
            // ...and --all ignores even a keep-list that is there.
            reset::request_as(&root, "cli", true).unwrap();
            boot_reset(&world).unwrap();
            assert_eq!(
                fs::read_dir(reset::upperdir(&root)).unwrap().count(),
                0,
                "reset --all keeps nothing"
            );
        },
    );
}
