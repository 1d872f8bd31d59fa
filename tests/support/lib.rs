//! The one test harness, for both test binaries (`tests/netns/`, `tests/qemu/`) and the Debian
//! boot (`tests/qemu_debian.rs`), which name it `support`:
//!
//! - [`base`]: the repository's paths, [`run`] for a command that must succeed, per-test
//!   [`Scratch`] space removed on drop, small trees and unique names.
//! - [`images`]: image makers (squashfs, erofs, ext4, GPT disks) and readers.
//! - [`namespace`]: a test body run in a private mount namespace, with loop devices and mounts
//!   that are always cleaned up.
//! - [`qemu`]: the kernel and artifacts a boot needs, one headless QEMU boot with a hard
//!   timeout, assertions on its serial console, a busybox initramfs.

pub mod base;
pub mod images;
pub mod namespace;
pub mod qemu;

pub use base::*;
pub use images::*;
pub use namespace::*;
pub use qemu::*;
