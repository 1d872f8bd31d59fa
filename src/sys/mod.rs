//! The only place that talks to the kernel. Every `unsafe` block lives here,
//! each with a SAFETY note.
#![allow(unsafe_code)]
pub mod blockdev;
pub mod carry;
pub mod console_key;
pub mod counterfile;
pub mod dirfd;
pub mod dm;
pub mod io;
pub mod kmsg;
pub mod lock;
pub mod loopdev;
pub mod lower_identity;
pub mod mkfs;
pub mod modules;
pub mod mount;
pub mod mtd;
#[cfg(ovl_no_unwinder)]
pub mod nounwind;
pub mod pivot;
pub mod power;
pub mod process;
pub mod statfs;
pub mod switch;
#[cfg(all(ovl_no_unwinder, target_env = "musl"))]
pub mod threadname;
pub mod ubi;
pub mod uevent;
pub mod upgrade_scan;
pub mod upperfs;
pub mod verity;
pub mod wipe;
