//! The only place that talks to the kernel. Every `unsafe` block lives here,
//! each with a SAFETY note.
pub mod loopdev;
pub mod uevent;
pub mod blockdev;
pub mod wipe;
pub mod modules;
