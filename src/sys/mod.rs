//! The only place that talks to the kernel. Every `unsafe` block lives here,
//! each with a SAFETY note.
pub mod blockdev;
pub mod console_key;
pub mod io;
pub mod kmsg;
pub mod loopdev;
pub mod mkfs;
pub mod modules;
pub mod mount;
pub mod pivot;
pub mod power;
pub mod switch;
pub mod uevent;
pub mod upperfs;
pub mod wipe;
