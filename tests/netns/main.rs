//! Mount-namespace tests, one binary: each test runs its body in a private mount namespace
//! (a child of this binary run for that one test) against the host kernel, with real loop
//! devices, and cleans up every mount and loop device it makes (`support::namespace`).
//!
//! Run: `cargo test --test netns` (as root), or one file: `cargo test --test netns reset::`.

/// The harness (`tests/support/`).
use overlay_init_test_support as support;

mod brick;
mod devices;
mod format;
mod fullupper;
mod live;
mod loopdev;
mod overlay;
mod reset;
mod router;
mod upgrade;
