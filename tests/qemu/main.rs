//! The tests that build the init and its images and boot them: QEMU boots under TCG, each with
//! a hard timeout, asserting on the serial console (`support::qemu`; at most `OVL_QEMU_JOBS`
//! guests at once), and the checks of what the build makes (binary size, the Debian package,
//! the benchmark's equal work).
//!
//! Run: `cargo test --test qemu` (as root), one file: `cargo test --test qemu boot::`, the
//! arm64 boots: `cargo test --test qemu aarch64`.

/// The harness (`tests/support/`).
use overlay_init_test_support as support;

mod bench_equal_work;
mod binary_size;
mod boot;
mod brick;
mod devices;
mod failures;
mod firstboot;
mod flash;
mod image;
mod live;
mod package;
mod quiet;
mod reset;
mod reset_powercut;
mod router;
mod smoke;
mod upgrade;
mod verity;
mod verity_dm;
