//! Size regression: the stripped release init (the binary that goes into every initramfs and
//! onto routers' flash) must not grow past [`LIMIT`]. It is built as the QEMU tests and the
//! scripts build it (`qemu/lib.sh`'s `build_init`: release profile, musl, static, stripped).
//!
//! [`LIMIT`] is the size reached with std built from source (see docs/benchmarks.md, "Binary
//! size") plus a small margin for ordinary growth; issue 17's target is [`TARGET`].

use std::process::Command;

use crate::support::{repo_dir, run};

/// Bytes: 999,824 (976 KiB) with the prebuilt std on 2026-11-30 (Rust 1.95, musl); 497,360
/// (486 KiB) once `build_init` built std from source without its backtrace support, unwind
/// tables and C unwinder, and the init lost `std::process::Command` and float formatting. The
/// flash uppers (JFFS2 erase, UBI attach and volume creation) and the work/ repair then took it
/// to 526,032 bytes (514 KiB) at the merge, with verity 12 KiB smaller. Then (issue 17):
/// `pthread_setname_np` without musl's printf (-12 KiB) and `-Zfmt-debug=shallow` (-8 KiB):
/// 505,552 bytes (493.7 KiB). The limit is that rounded up to the next KiB plus 1 KiB, so
/// growth from here is seen; issue 17 stays open on size (docs/benchmarks.md, "Size").
const LIMIT: u64 = 495 * 1024;
/// Issue 17's target, for the message.
const TARGET: u64 = 400 * 1024;

#[test]
fn the_release_init_stays_under_its_size_limit() {
    let path = run(Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1/qemu/lib.sh" && build_init"#)
        .arg("bash")
        .arg(repo_dir()));
    let path = path
        .lines()
        .last()
        .expect("build_init printed no path")
        .trim();
    let size = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .len();
    eprintln!(
        "{path}: {size} bytes ({} KiB); limit {} KiB, issue 17's target {} KiB",
        size / 1024,
        LIMIT / 1024,
        TARGET / 1024
    );
    assert!(
        size <= LIMIT,
        "the init grew to {size} bytes ({} KiB), past the limit of {} KiB: find what grew with \
         `CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target/bloat bash -c 'source \
         qemu/lib.sh && init_cargo x86_64-unknown-linux-musl bloat --crates'`, see \
         docs/benchmarks.md",
        size / 1024,
        LIMIT / 1024
    );
}
