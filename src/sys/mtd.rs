//! MTD (raw flash) partitions for a JFFS2 upper (`ovl.upper=mtd:NAME`): find a
//! partition by name in `/proc/mtd`, read its start, and erase it through the
//! MTD character device (`/dev/mtdN`, built with `CONFIG_MTD`) with `MEMGETINFO`,
//! `MEMGETBADBLOCK` and `MEMERASE64`, the ioctls OpenWrt's `mtd erase` and
//! fstools use.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::ioctl::{self, opcode, Getter, Ioctl, IoctlOutput, Opcode, Setter};

use crate::upperparams::{parse_proc_mtd, MtdPartition};

/// `struct mtd_info_user` from <mtd/mtd-abi.h> (`MEMGETINFO`'s result).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MtdInfoUser {
    kind: u8,
    flags: u32,
    size: u32,
    erasesize: u32,
    writesize: u32,
    oobsize: u32,
    padding: u64,
}

/// `struct erase_info_user64` from <mtd/mtd-abi.h> (`MEMERASE64`'s argument).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct EraseInfoUser64 {
    start: u64,
    length: u64,
}

const _: () = assert!(std::mem::size_of::<MtdInfoUser>() == 32);
const _: () = assert!(std::mem::size_of::<EraseInfoUser64>() == 16);
const _: () = assert!(std::mem::size_of::<i64>() == 8);

/// `_IOR('M', 1, struct mtd_info_user)`.
const MEMGETINFO: Opcode = opcode::read::<MtdInfoUser>(b'M', 1);
/// `_IOW('M', 11, __kernel_loff_t)`.
const MEMGETBADBLOCK: Opcode = opcode::write::<i64>(b'M', 11);
/// `_IOW('M', 20, struct erase_info_user64)`.
const MEMERASE64: Opcode = opcode::write::<EraseInfoUser64>(b'M', 20);

/// `MTD_NORFLASH`, `MTD_NANDFLASH`, ... as `MEMGETINFO` reports them.
const MTD_NANDFLASH: u8 = 4;
const MTD_MLCNANDFLASH: u8 = 8;

/// `/proc/mtd`, parsed.
pub fn partitions() -> Result<Vec<MtdPartition>> {
    let text = std::fs::read_to_string("/proc/mtd")
        .context("read /proc/mtd (is CONFIG_MTD in the kernel?)")?;
    parse_proc_mtd(&text).map_err(anyhow::Error::msg)
}

/// Wait until `/proc/mtd` lists `/dev/mtdN` (`ovl.ubiattach=mtdN`), up to `timeout`.
pub fn wait_for_index(index: u32, timeout: Duration) -> Result<MtdPartition> {
    wait_until(timeout, |p| p.index == index, &format!("mtd{index}"))
}

/// Wait until `/proc/mtd` lists a partition named `name` (a flash driver may
/// probe late, or come from a module loaded just now), up to `timeout`. Polls
/// every 20 ms: the kernel sends no uevent PID 1 could wait on before udev runs
/// that is simpler than reading the one file that answers.
pub fn wait_for_partition(name: &str, timeout: Duration) -> Result<MtdPartition> {
    wait_until(
        timeout,
        |p| p.name == name,
        &format!("an MTD partition named {name:?}"),
    )
}

fn wait_until(
    timeout: Duration,
    wanted: impl Fn(&MtdPartition) -> bool,
    what: &str,
) -> Result<MtdPartition> {
    let started = Instant::now();
    loop {
        // /proc/mtd is missing only when the kernel has no MTD support at all.
        let listed = partitions()?;
        if let Some(found) = listed.iter().find(|p| wanted(p)) {
            return Ok(found.clone());
        }
        if started.elapsed() >= timeout {
            let names: Vec<String> = listed
                .iter()
                .map(|p| format!("mtd{} {:?}", p.index, p.name))
                .collect();
            bail!(
                "no {what} after {} s (ovl.timeout=); /proc/mtd lists: {}",
                timeout.as_secs(),
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/dev/mtdN`, the character device of partition N.
pub fn char_device(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/mtd{index}"))
}

/// What `MEMGETINFO` says about a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtdInfo {
    pub size: u64,
    pub erase_size: u32,
    pub nand: bool,
}

/// An open MTD character device.
#[derive(Debug)]
pub struct Mtd {
    file: File,
    path: PathBuf,
    pub info: MtdInfo,
}

impl Mtd {
    /// Open `/dev/mtdN` (read-write only when it will be erased).
    pub fn open(index: u32, writable: bool) -> Result<Mtd> {
        let path = char_device(index);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .with_context(|| format!("open {} (the MTD character device)", path.display()))?;
        let raw = mem_get_info(file.as_fd())
            .with_context(|| format!("MEMGETINFO on {}", path.display()))?;
        if raw.erasesize == 0 {
            bail!("{}: the kernel reports an erase size of 0", path.display());
        }
        let info = MtdInfo {
            size: raw.size.into(),
            erase_size: raw.erasesize,
            nand: matches!(raw.kind, MTD_NANDFLASH | MTD_MLCNANDFLASH),
        };
        Ok(Mtd { file, path, info })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read `len` bytes at `offset` (clamped to the partition).
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let len = len.min(self.info.size.saturating_sub(offset) as usize);
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .with_context(|| format!("read {len} bytes at {offset} of {}", self.path.display()))?;
        Ok(buf)
    }

    /// Erase every good block, the last first and block 0 (which holds the
    /// `deadc0de` marker or the JFFS2 that is being replaced) last, with a
    /// flush before it: a power cut midway leaves the start as it was, so the
    /// next boot erases again. Returns the number of bad blocks skipped.
    pub fn erase_all(&self) -> Result<u32> {
        let block = u64::from(self.info.erase_size);
        let blocks = self.info.size / block;
        let mut bad = 0;
        for n in (0..blocks).rev() {
            let start = n * block;
            if n == 0 {
                self.sync()?;
            }
            if self.info.nand && self.is_bad(start)? {
                bad += 1;
                continue;
            }
            mem_erase64(
                self.file.as_fd(),
                EraseInfoUser64 {
                    start,
                    length: block,
                },
            )
            .with_context(|| {
                format!(
                    "MEMERASE64 of the block at {start:#x} of {}",
                    self.path.display()
                )
            })?;
        }
        self.sync()?;
        Ok(bad)
    }

    fn is_bad(&self, offset: u64) -> Result<bool> {
        match mem_get_bad_block(self.file.as_fd(), offset as i64) {
            Ok(n) => Ok(n > 0),
            // NOR flash has no bad blocks: the ioctl is not supported there.
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!("MEMGETBADBLOCK at {offset:#x} of {}", self.path.display())
            }),
        }
    }

    /// Flush the driver's caches (block2mtd keeps its writes in the backing
    /// disk's page cache until then). The MTD character device has no fsync
    /// (EINVAL); closing a descriptor opened for writing calls the driver's
    /// sync, so one is opened and closed.
    fn sync(&self) -> Result<()> {
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .with_context(|| format!("open {} to flush it", self.path.display()))?;
        drop(writer);
        Ok(())
    }
}

fn mem_get_info(fd: BorrowedFd<'_>) -> rustix::io::Result<MtdInfoUser> {
    // SAFETY: MEMGETINFO writes one `struct mtd_info_user`, mirrored by
    // MtdInfoUser (size checked at compile time); Getter provides the storage.
    unsafe { ioctl::ioctl(fd, Getter::<MEMGETINFO, MtdInfoUser>::new()) }
}

fn mem_erase64(fd: BorrowedFd<'_>, erase: EraseInfoUser64) -> rustix::io::Result<()> {
    // SAFETY: MEMERASE64 reads one `struct erase_info_user64`, mirrored by
    // EraseInfoUser64 (size checked at compile time); Setter passes a pointer
    // that stays valid for the call.
    unsafe { ioctl::ioctl(fd, Setter::<MEMERASE64, EraseInfoUser64>::new(erase)) }
}

/// `MEMGETBADBLOCK` reads an offset through its pointer and answers in the
/// ioctl's return value (1: bad), which Setter would drop.
struct GetBadBlock {
    offset: i64,
}

// SAFETY: MEMGETBADBLOCK reads one `__kernel_loff_t` (i64) through the pointer,
// which points at `self.offset` and stays valid for the call; it writes no
// userspace memory and its result is the return value.
unsafe impl Ioctl for GetBadBlock {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        MEMGETBADBLOCK
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (&mut self.offset as *mut i64).cast()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<Self::Output> {
        Ok(out)
    }
}

fn mem_get_bad_block(fd: BorrowedFd<'_>, offset: i64) -> rustix::io::Result<IoctlOutput> {
    // SAFETY: `fd` is an open MTD character device; GetBadBlock matches the
    // kernel's contract for MEMGETBADBLOCK (see its impl).
    unsafe { ioctl::ioctl(fd, GetBadBlock { offset }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opcodes as <mtd/mtd-abi.h> encodes them on x86 and arm.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "x86"))]
    fn opcodes_match_the_kernel_headers() {
        assert_eq!(MEMGETINFO, 0x8020_4d01);
        assert_eq!(MEMGETBADBLOCK, 0x4008_4d0b);
        assert_eq!(MEMERASE64, 0x4010_4d14);
    }

    #[test]
    fn char_device_path() {
        assert_eq!(char_device(3), PathBuf::from("/dev/mtd3"));
    }
}
