//! Size regression: the stripped release init (the binary that goes into every initramfs and
//! onto routers' flash) must not grow past [`LIMIT`]. It is built as the QEMU tests and the
//! scripts build it (`qemu/lib.sh`'s `build_init`: release profile, musl, static, stripped).
//!
//! [`LIMIT`] is the size reached on stable Rust (see docs/benchmarks.md, "Binary size") plus a
//! small margin for ordinary growth; issue 17's target is [`TARGET`], which needs a std built
//! without its backtrace support (nightly `-Zbuild-std`), see the same section.

mod common;

use std::process::Command;

use common::{repo_dir, run};

/// Bytes: 733,552 (716 KiB) measured when this limit was set (2026-11-30, Rust 1.95, musl),
/// plus about 3% (the size moves in 4 KiB steps: the segments are page-aligned); raised by
/// 20 KiB for dm-verity (issue 16's budget), whose wiring measured 774,544 bytes against
/// 741,744 before it (+32 KiB, over that budget: see the branch's report).
const LIMIT: u64 = 760 * 1024;
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
