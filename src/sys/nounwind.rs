//! No unwinder in the init (only when built by `qemu/lib.sh`'s `build_init`,
//! which sets `--cfg ovl_no_unwinder`).
//!
//! The init is built with `panic = "abort"` and without unwind tables for Rust
//! code (`-C force-unwind-tables=no`), so nothing ever unwinds and no stack can
//! be walked. Two parts of std still link the C unwinder (LLVM's libunwind from
//! the musl target, ~50 KiB, and musl's printf that its logging uses, ~9 KiB):
//! - backtrace *tracing*: `std::backtrace::Backtrace` and the default panic
//!   hook's `RUST_BACKTRACE=1` call `_Unwind_Backtrace` (and `_Unwind_GetIP`);
//! - std's personality routine (`rust_eh_personality`), which is linked
//!   whatever the panic strategy and calls the `_Unwind_Get*`/`_Unwind_Set*`
//!   accessors, but only ever runs inside an unwinder's raise.
//!
//! Defining those symbols here keeps the linker from pulling libunwind in.
//! `_Unwind_Backtrace` reports the end of the stack at once; the accessors are
//! never called (there is no `_Unwind_RaiseException` to call the personality)
//! and return "nothing". Nothing changes: the init's panic hook (the failure
//! handler) prints no backtrace, and without unwind tables a backtrace had no
//! frames to show anyway. With the prebuilt std (a plain `cargo build`, whose
//! std is compiled to unwind) this module is off: that std needs the real
//! unwinder, and both would define these symbols. A std that needs another
//! unwinder symbol makes the link fail ("multiple definition of `_Unwind_...`"):
//! add it here.

use core::ffi::{c_int, c_void};

/// `_URC_END_OF_STACK` of `<unwind.h>`.
const END_OF_STACK: c_int = 5;

/// `_Unwind_Reason_Code _Unwind_Backtrace(_Unwind_Trace_Fn, void *)`: reports
/// the end of the stack at once, without calling the trace function.
#[no_mangle]
pub extern "C" fn _Unwind_Backtrace(_trace: *mut c_void, _arg: *mut c_void) -> c_int {
    END_OF_STACK
}

/// `uintptr_t _Unwind_GetIP(struct _Unwind_Context *)`: never called, since
/// [`_Unwind_Backtrace`] calls no trace function; 0 for "no frame".
#[no_mangle]
pub extern "C" fn _Unwind_GetIP(_context: *mut c_void) -> usize {
    0
}

// The accessors std's personality routine calls (`<unwind.h>`); an unwinder's
// raise is the only caller, and there is none.

/// `uintptr_t _Unwind_GetIPInfo(struct _Unwind_Context *, int *)`.
#[no_mangle]
pub extern "C" fn _Unwind_GetIPInfo(_context: *mut c_void, _before: *mut c_int) -> usize {
    0
}

/// `void *_Unwind_GetLanguageSpecificData(struct _Unwind_Context *)`.
#[no_mangle]
pub extern "C" fn _Unwind_GetLanguageSpecificData(_context: *mut c_void) -> *mut c_void {
    core::ptr::null_mut()
}

/// `uintptr_t _Unwind_GetRegionStart(struct _Unwind_Context *)`.
#[no_mangle]
pub extern "C" fn _Unwind_GetRegionStart(_context: *mut c_void) -> usize {
    0
}

/// `uintptr_t _Unwind_GetTextRelBase(struct _Unwind_Context *)`.
#[no_mangle]
pub extern "C" fn _Unwind_GetTextRelBase(_context: *mut c_void) -> usize {
    0
}

/// `uintptr_t _Unwind_GetDataRelBase(struct _Unwind_Context *)`.
#[no_mangle]
pub extern "C" fn _Unwind_GetDataRelBase(_context: *mut c_void) -> usize {
    0
}

/// `void _Unwind_SetGR(struct _Unwind_Context *, int, uintptr_t)`.
#[no_mangle]
pub extern "C" fn _Unwind_SetGR(_context: *mut c_void, _index: c_int, _value: usize) {}

/// `void _Unwind_SetIP(struct _Unwind_Context *, uintptr_t)`.
#[no_mangle]
pub extern "C" fn _Unwind_SetIP(_context: *mut c_void, _value: usize) {}
