//! overlay-init: a static PID 1 that boots Linux on a read-only image with a
//! writable overlay, and resets that overlay to factory state on request.
//!
//! Pure core, thin shell: everything outside `sys` is plain data and logic that
//! unit tests can reach; only `sys` talks to the kernel.

pub mod boot;
pub mod boot_router;
pub mod bootcount;
pub mod cli;
pub mod cmdline;
pub mod devices;
pub mod devspec;
pub mod fail;
pub mod failsafe;
pub mod fstype;
pub mod initramfs;
pub mod logger;
pub mod lower;
pub mod mkfs;
pub mod modindex;
pub mod overlay;
pub mod probe;
pub mod reset;
pub mod router;
pub mod state;
pub mod switch;
pub mod sys;
pub mod timeline;
pub mod uevent;
pub mod upper;
pub mod upperparams;

#[cfg(test)]
mod test_rng;
