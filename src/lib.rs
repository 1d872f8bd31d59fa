//! overlay-init: a static PID 1 that boots Linux on a read-only image with a
//! writable overlay, and resets that overlay to factory state on request.
//!
//! Pure core, thin shell: everything outside `sys` is plain data and logic that
//! unit tests can reach; only `sys` talks to the kernel, and only `sys` may
//! use `unsafe` (each block with a `// SAFETY:` note, which clippy checks).

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod boot;
pub mod bootcount;
pub mod cli;
pub mod cmdline;
pub mod cmdline_bytes;
pub mod decimal;
pub mod devices;
pub mod devspec;
pub mod executable;
pub mod failsafe;
pub mod flashupper;
pub mod fstype;
pub mod hostmount;
#[cfg(feature = "builder")]
pub mod initramfs;
pub mod layout;
pub mod live;
pub mod logger;
pub mod lower;
pub mod mkfs;
pub mod modindex;
pub mod mounted_root;
pub mod mountinfo;
pub mod overlay;
pub mod probe;
pub mod reset;
pub mod state;
pub mod staterepair;
pub mod status;
pub mod sys;
pub mod timeline;
pub mod uevent;
pub mod upgrade;
pub mod upperparams;
pub mod verity;

#[cfg(test)]
mod test_rng;
