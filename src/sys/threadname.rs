//! `pthread_setname_np` for the musl init, without musl's `printf`.
//!
//! std gives a thread spawned with a name (`std::thread::Builder::name`) that name by calling
//! `pthread_setname_np(pthread_self(), name)` from the new thread, and calls it nowhere else;
//! the init's threads (the module loader's workers, the console readers) have no name, but
//! std's spawn links the call all the same. musl's version formats `/proc/self/task/%d/comm` with `snprintf` for another
//! thread, which is the only use of `printf` in the init: linking it brought musl's whole
//! `printf` (with float formatting, `fmt_fp`), 8 KiB of the stripped binary.
//!
//! Defined here, the linker takes this one and leaves musl's archive member (and `printf`)
//! out. It does what musl does for the calling thread, `prctl(PR_SET_NAME)`, with musl's
//! `ERANGE` for a name longer than the kernel's 15 bytes; for another thread it returns
//! `ENOTSUP` (std never asks, and nothing else in the init does). musl only: glibc's static
//! library defines it in an object with other symbols, and the glibc fallback keeps glibc's.

use core::ffi::{c_char, c_int, CStr};

/// The kernel's `TASK_COMM_LEN` (16) less the terminating NUL.
const MAX_NAME: usize = 15;

/// `int pthread_setname_np(pthread_t thread, const char *name)`.
///
/// # Safety
/// `name` is a NUL-terminated string (the C contract).
#[no_mangle]
pub unsafe extern "C" fn pthread_setname_np(thread: libc::pthread_t, name: *const c_char) -> c_int {
    // SAFETY: pthread_self has no preconditions; pthread_equal compares two handles.
    if unsafe { libc::pthread_equal(thread, libc::pthread_self()) } == 0 {
        return libc::ENOTSUP;
    }
    // SAFETY: the caller passes a NUL-terminated string (the function's C contract).
    let name = unsafe { CStr::from_ptr(name) };
    if name.to_bytes().len() > MAX_NAME {
        return libc::ERANGE;
    }
    match rustix::thread::set_name(name) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    }
}
