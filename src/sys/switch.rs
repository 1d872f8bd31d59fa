//! The handover: check the real init, make the new root `/`, free the initramfs,
//! and exec the real init.

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags};

use crate::executable::classify_executable;
use crate::sys::{dirfd, statfs, wipe};

/// Check that `init` names a runnable file inside `new_root`, resolving
/// symlinks as the kernel will once `new_root` is `/`. Returns it open, read
/// past its first bytes (a verified lower reads the rest: `boot::verity`).
pub fn check_init(new_root: &Path, init: &str) -> Result<std::fs::File> {
    let root = rustix::fs::open(new_root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .with_context(|| format!("open new root {}", new_root.display()))?;
    let fd = openat2(
        &root,
        init,
        // O_NONBLOCK: a FIFO at the init path must not block PID 1 (the
        // type is checked next, before anything is read).
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .with_context(|| format!("the real init {init} is missing from the new root"))?;
    let st = rustix::fs::fstat(&fd).with_context(|| format!("stat {init}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        bail!("the real init {init} is not a regular file");
    }
    if st.st_mode & 0o111 == 0 {
        bail!(
            "the real init {init} is not executable (mode {:o})",
            st.st_mode & 0o7777
        );
    }
    let mut head = [0u8; 4];
    let mut file = std::fs::File::from(fd);
    let n = file
        .read(&mut head)
        .with_context(|| format!("read {init}"))?;
    classify_executable(&head[..n])
        .map_err(|why| anyhow::anyhow!("the real init {init} cannot run: {why}"))?;
    Ok(file)
}

/// What freeing the initramfs did.
#[derive(Debug, Default, Clone, Copy)]
pub struct FreeStats {
    pub removed: u64,
    /// Entries left because they could not be removed (mount points, errors).
    pub kept: u64,
}

/// Open the initramfs (`/`) before the switch, to free it through this
/// descriptor afterwards (systemd's `switch-root.c` order: a switch that fails
/// leaves the initramfs, and its rescue shell, whole). Refuses unless `/`
/// really is a ramfs/tmpfs.
pub fn open_old_root() -> Result<OwnedFd> {
    let root = dirfd::open_dir(Path::new("/"))?;
    if !statfs::is_volatile_fs(root.as_fd()).context("statfs /")? {
        bail!("refusing to delete / : it is not an initramfs (not a ramfs or tmpfs)");
    }
    Ok(root)
}

/// Delete everything on the old initramfs, through `old_root` from
/// [`open_old_root`], after the switch: never crossing into other filesystems
/// or mounts (the new root sits on it) and never following symlinks
/// ([`wipe::wipe_contents`]).
pub fn free_old_root(old_root: BorrowedFd<'_>) -> Result<FreeStats> {
    let report = wipe::wipe_contents(old_root, Path::new("/ (the old initramfs)"))?;
    for failure in &report.failures {
        log::debug!("initramfs: could not remove {failure}");
    }
    Ok(FreeStats {
        removed: report.removed,
        kept: report.mount_points_left.len() as u64 + report.failure_count,
    })
}

/// Make `new_root` the root: make `/` private (the move must not propagate),
/// move the new root onto `/`, chroot into it. The initramfs is freed after
/// this returns ([`free_old_root`]), so on failure it is still whole.
pub fn enter_new_root(new_root: &Path) -> Result<()> {
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .context("make / private before the switch")?;
    rustix::process::chdir(new_root).with_context(|| format!("chdir {}", new_root.display()))?;
    rustix::mount::mount_move(".", "/")
        .with_context(|| format!("move {} onto /", new_root.display()))?;
    rustix::process::chroot(".").context("chroot into the new root")?;
    rustix::process::chdir("/").context("chdir / in the new root")?;
    Ok(())
}

/// Point fds 0, 1 and 2 at the new root's `/dev/console`.
pub fn reopen_console() -> Result<()> {
    let console = rustix::fs::open("/dev/console", OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
        .context("open /dev/console")?;
    rustix::stdio::dup2_stdin(&console).context("dup2 console to stdin")?;
    rustix::stdio::dup2_stdout(&console).context("dup2 console to stdout")?;
    rustix::stdio::dup2_stderr(&console).context("dup2 console to stderr")?;
    Ok(())
}

/// Replace this process with the real init (`init` is an absolute path, as the
/// command line requires; `args` follow it, the environment is kept). Returns
/// only on failure.
///
/// `execv` itself rather than `std::process::Command`, which links std's
/// process-spawning and environment-copying machinery (~10 KiB) for one exec.
/// Like `Command`, it first gives the real init the signal state a new process
/// expects: SIGPIPE back to its default (the Rust runtime ignores it, and an
/// ignored signal stays ignored across exec) and no blocked signals.
pub fn exec_init(init: &str, args: &[OsString]) -> anyhow::Error {
    let context = || format!("exec the real init {init}");
    let Ok(path) = CString::new(init) else {
        return anyhow::anyhow!("{}: the path contains a NUL byte", context());
    };
    let mut argv = vec![path.clone()];
    for arg in args {
        match CString::new(arg.as_bytes()) {
            Ok(arg) => argv.push(arg),
            Err(_) => {
                return anyhow::anyhow!("{}: argument {arg:?} contains a NUL byte", context())
            }
        }
    }
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: PID 1 is single-threaded here (it is about to become the real
    // init); `pointers` is a NULL-terminated array of pointers into `argv`'s
    // NUL-terminated strings, and both outlive the call, which only returns on
    // failure. The signal calls take a valid, initialised, stack-owned set.
    let err = unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execv(path.as_ptr(), pointers.as_ptr());
        std::io::Error::last_os_error()
    };
    anyhow::Error::new(err).context(context())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_init_does_not_block_on_a_fifo() {
        let root = std::env::temp_dir().join(format!("ovl-check-init-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("sbin/init"),
            FileType::Fifo,
            Mode::from_raw_mode(0o755),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = root.clone();
        std::thread::spawn(move || {
            let _ = tx.send(
                check_init(&r, "/sbin/init")
                    .map(drop)
                    .map_err(|e| format!("{e:#}")),
            );
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("check_init blocked on a FIFO");
        let err = result.unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
