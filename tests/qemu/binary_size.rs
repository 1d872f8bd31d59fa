//! Size regression: the stripped release init (the binary that goes into every initramfs and
//! onto routers' flash) must not grow past [`LIMIT`]. It is built as the QEMU tests and the
//! scripts build it (`qemu/lib.sh`'s `build_init`: release profile, musl, static, stripped).
//!
//! [`LIMIT`] is the size reached on stable Rust (see docs/benchmarks.md, "Binary size") plus a
//! small margin for ordinary growth; issue 17's target is [`TARGET`], which needs a std built
//! without its backtrace support (nightly `-Zbuild-std`), see the same section.

use std::process::Command;

use crate::support::{repo_dir, run};

/// Bytes: 733,552 (716 KiB) when the limit was first set (2026-11-30, Rust 1.95, musl). The
/// features merged the same day then grew the init to 999,824 bytes (976 KiB: dm-verity +32 KiB,
/// live media +24 KiB, upgrade identity with its SHA-256, keep-list carry and scans, status
/// JSON, the never-brick fixes: 926,096 bytes; then the first-boot formatter with the
/// blank/f2fs/LUKS/md probes and the full-upper recovery: +72 KiB). The limit is that plus
/// about 2% (the size moves in 4 KiB steps: the segments are page-aligned), so growth from
/// here is seen; issue 17 stays open on size. The flash uppers (JFFS2 erase over the MTD
/// ioctls, UBI attach and volume creation, the UBIFS first format, the RENAME_EXCHANGE
/// probe) then added 36 KiB: 1,036,688 bytes (1012 KiB); the limit is that plus one page.
const LIMIT: u64 = 1016 * 1024;
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
         `cargo bloat --release --target x86_64-unknown-linux-musl --bin overlay-init --crates` \
         (with CARGO_PROFILE_RELEASE_STRIP=false), see docs/benchmarks.md",
        size / 1024,
        LIMIT / 1024
    );
}
