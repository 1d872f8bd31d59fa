//! A full persistent upper against the real kernel (issue 14): `boot::fullupper::with_room`
//! on an ext4 loop device filled to 100% as root (reserved blocks included) removes an
//! earlier reset's trash first, then `work/`'s leftovers, and only then gives up with
//! advice on how to free the upper.
//!
//! Needs root, loop and ext4, mkfs.ext4. Run: `cargo test --test netns fullupper::`

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::support::{in_private_mount_namespace, run, Mounted};
use overlay_init::boot::fullupper::with_room;

/// A 16 MiB ext4 at `dir/fs` with `trash_mib` of reset trash and `work_mib` of work/
/// leftovers, then filled to ENOSPC as root.
fn full_upper(dir: &Path, trash_mib: usize, work_mib: usize) -> (Mounted, std::path::PathBuf) {
    let img = dir.join("upper.img");
    fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "overlay"])
        .arg(&img));
    let mnt = dir.join("fs");
    fs::create_dir(&mnt).unwrap();
    let mounted = Mounted::loop_image(&img, "ext4", &mnt);
    fs::create_dir_all(mnt.join("upper/etc")).unwrap();
    fs::write(mnt.join("upper/etc/kept"), "a setting\n").unwrap();
    fs::create_dir_all(mnt.join(".overlay-init/trash/1/etc")).unwrap();
    fs::create_dir_all(mnt.join("work/work/#1")).unwrap();
    fs::write(
        mnt.join(".overlay-init/trash/1/etc/old"),
        vec![1u8; trash_mib << 20],
    )
    .unwrap();
    fs::write(mnt.join("work/work/#1/left"), vec![2u8; work_mib << 20]).unwrap();
    let mut fill = fs::File::create(mnt.join("upper/fill")).unwrap();
    let chunk = vec![3u8; 64 << 10];
    while fill
        .write_all(&chunk)
        .and_then(|()| fill.sync_all())
        .is_ok()
    {}
    drop(fill);
    let st = rustix::fs::statvfs(&mnt).unwrap();
    // ext4 keeps ~2% (s_resv_clusters) that no write gets, root's included.
    assert_eq!(st.f_bavail, 0, "not full: {} blocks available", st.f_bavail);
    (mounted, mnt)
}

/// What overlayfs needs at mount: room in work/ (here 1 MiB, written durably).
fn needs_room(mnt: &Path) -> anyhow::Result<()> {
    let path = mnt.join("work/needs-room");
    let result = (|| {
        let mut f = fs::File::create(&path)?;
        f.write_all(&vec![4u8; 1 << 20])?;
        f.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    Ok(result?)
}

#[test]
fn the_trash_of_an_earlier_reset_goes_first() {
    in_private_mount_namespace("the_trash_of_an_earlier_reset_goes_first", |dir| {
        let (_m, mnt) = full_upper(dir, 3, 3);
        assert!(needs_room(&mnt).is_err(), "the upper is not full");
        with_room(&mnt, Path::new("/dev/test"), || needs_room(&mnt), || Ok(())).unwrap();
        assert!(
            !mnt.join(".overlay-init/trash/1").exists(),
            "the trash is still there"
        );
        assert!(
            mnt.join("work/work/#1/left").exists(),
            "work/ was emptied before it had to be"
        );
        assert_eq!(
            fs::read_to_string(mnt.join("upper/etc/kept")).unwrap(),
            "a setting\n"
        );
    });
}

#[test]
fn then_the_leftovers_of_work() {
    in_private_mount_namespace("then_the_leftovers_of_work", |dir| {
        let (_m, mnt) = full_upper(dir, 0, 3);
        with_room(&mnt, Path::new("/dev/test"), || needs_room(&mnt), || Ok(())).unwrap();
        assert!(
            !mnt.join("work/work").exists(),
            "work/'s leftovers are still there"
        );
        assert!(mnt.join("work/needs-room").exists());
        assert_eq!(
            fs::read_to_string(mnt.join("upper/etc/kept")).unwrap(),
            "a setting\n"
        );
    });
}

#[test]
fn nothing_to_remove_says_the_upper_is_full_and_how_to_free_it() {
    in_private_mount_namespace(
        "nothing_to_remove_says_the_upper_is_full_and_how_to_free_it",
        |dir| {
            let (_m, mnt) = full_upper(dir, 0, 0);
            let error =
                with_room(&mnt, Path::new("/dev/vdb"), || needs_room(&mnt), || Ok(())).unwrap_err();
            let text = format!("{error:#}");
            assert!(text.contains("the upper /dev/vdb is full"), "{text}");
            assert!(text.contains("ovl.failsafe"), "{text}");
            // Nothing of the changes was removed.
            assert!(mnt.join("upper/fill").exists());
            assert_eq!(
                fs::read_to_string(mnt.join("upper/etc/kept")).unwrap(),
                "a setting\n"
            );
        },
    );
}
