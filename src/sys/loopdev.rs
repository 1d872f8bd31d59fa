//! Loop devices: attach an image file to a free `/dev/loopN`, read-only.
//!
//! Used for `ovl.image=PATH` and for file entries of `ovl.lower=`. The kernel's
//! loop API is small: `/dev/loop-control` hands out a free device number
//! (`LOOP_CTL_GET_FREE`), and one `LOOP_CONFIGURE` on that device binds the
//! backing file with its flags in a single step. Kernels before 5.8 lack
//! `LOOP_CONFIGURE`; there `LOOP_SET_FD` + `LOOP_SET_STATUS64` do the same in two.
//!
//! Every device is attached with `LO_FLAGS_AUTOCLEAR`: once the last opener
//! (our fd, or the mount made on it) goes away the kernel detaches it by itself.
//! [`LoopDevice`] detaches explicitly on drop so that an error between attach
//! and mount leaves nothing behind; the boot path calls [`LoopDevice::keep`]
//! after the mount so the device lives exactly as long as the mount.

use std::ffi::c_int;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::ioctl::{self, Getter, IntegerSetter, Ioctl, IoctlOutput, NoArg, Opcode, Setter};

// Opcodes from <linux/loop.h> and <linux/fs.h>. The loop ones predate the
// _IO() encoding and are plain numbers.
const LOOP_SET_FD: Opcode = 0x4C00;
const LOOP_CLR_FD: Opcode = 0x4C01;
const LOOP_SET_STATUS64: Opcode = 0x4C04;
const LOOP_SET_DIRECT_IO: Opcode = 0x4C08;
const LOOP_CONFIGURE: Opcode = 0x4C0A;
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
/// `_IO(0x12, 94)`: read the block device's read-only flag into an `int`. Encoded by rustix
/// for the target: 0x125E on x86 and arm, with a direction bit on mips, powerpc and sparc.
const BLKROGET: Opcode = ioctl::opcode::none(0x12, 94);

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// Major number of loop block devices.
const LOOP_MAJOR: u32 = 7;

/// How many times a free device may be taken from under us before giving up.
const MAX_ATTACH_ATTEMPTS: usize = 16;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h> (the `LOOP_CONFIGURE` argument).
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    fn new(flags: u32, backing: &Path) -> Self {
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        };
        // Informational only (shown by `losetup -l`); truncated like losetup does,
        // keeping the terminating NUL.
        let name = backing.as_os_str().as_encoded_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..len].copy_from_slice(&name[..len]);
        info
    }
}

/// `LOOP_CTL_GET_FREE` returns the device number as the ioctl's result, which
/// none of rustix's ready-made patterns pass through.
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument (the pointer is null and never
// read) and writes no userspace memory; its result is the return value.
unsafe impl Ioctl for GetFree {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<Self::Output> {
        Ok(out)
    }
}

fn get_free_number(control: BorrowedFd<'_>) -> rustix::io::Result<u32> {
    // SAFETY: `control` is an open /dev/loop-control; GetFree matches the
    // kernel's contract for LOOP_CTL_GET_FREE (see its impl).
    let number = unsafe { ioctl::ioctl(control, GetFree)? };
    // The kernel never returns a negative number on success.
    Ok(number as u32)
}

fn loop_configure(device: BorrowedFd<'_>, config: LoopConfig) -> rustix::io::Result<()> {
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which LoopConfig
    // mirrors field for field (size checked at compile time); Setter passes a
    // pointer to it that stays valid for the call.
    unsafe { ioctl::ioctl(device, Setter::<LOOP_CONFIGURE, LoopConfig>::new(config)) }
}

fn loop_set_fd(device: BorrowedFd<'_>, backing: BorrowedFd<'_>) -> rustix::io::Result<()> {
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as an integer
    // argument; `backing` is open for the duration of the call.
    unsafe {
        ioctl::ioctl(
            device,
            IntegerSetter::<LOOP_SET_FD>::new_usize(backing.as_raw_fd() as usize),
        )
    }
}

fn loop_set_status64(device: BorrowedFd<'_>, info: LoopInfo64) -> rustix::io::Result<()> {
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64`, mirrored by
    // LoopInfo64 (size checked at compile time).
    unsafe { ioctl::ioctl(device, Setter::<LOOP_SET_STATUS64, LoopInfo64>::new(info)) }
}

fn loop_set_direct_io(device: BorrowedFd<'_>, enable: bool) -> rustix::io::Result<()> {
    // SAFETY: LOOP_SET_DIRECT_IO takes a plain integer (0 or 1).
    unsafe {
        ioctl::ioctl(
            device,
            IntegerSetter::<LOOP_SET_DIRECT_IO>::new_usize(enable as usize),
        )
    }
}

fn loop_clr_fd(device: BorrowedFd<'_>) -> rustix::io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { ioctl::ioctl(device, NoArg::<LOOP_CLR_FD>::new()) }
}

fn block_read_only(device: BorrowedFd<'_>) -> rustix::io::Result<bool> {
    // SAFETY: BLKROGET writes one `int`, which Getter provides storage for.
    let read_only = unsafe { ioctl::ioctl(device, Getter::<BLKROGET, c_int>::new())? };
    Ok(read_only != 0)
}

/// How to attach a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttachOptions {
    /// Ask for direct I/O on the backing file, so its pages are not cached a
    /// second time under the loop device. Dropped when the backing filesystem
    /// cannot do it.
    ///
    /// Off by default: a cold read of a 264 MiB squashfs image on ext4
    /// (virtio disk, `find -type f -exec cat`, caches dropped, six pairs) took
    /// a median 18.5 s with direct I/O against 7.6 s without, slower in every
    /// pair — the backing file loses its readahead. What direct I/O saves is
    /// the backing file's page cache (the whole 264 MiB after a full read, 0
    /// with direct I/O), which is clean and reclaimable.
    pub direct_io: bool,
}

/// A loop device bound read-only to a backing file. Detached on drop unless
/// [`LoopDevice::keep`] was called.
#[derive(Debug)]
pub struct LoopDevice {
    number: u32,
    path: PathBuf,
    device: Option<OwnedFd>,
}

impl LoopDevice {
    /// Attach `backing` read-only to a free loop device.
    pub fn attach_read_only(backing: &Path, options: AttachOptions) -> anyhow::Result<Self> {
        Self::attach(backing, options, false)
    }

    /// Attach `backing` read-write (with autoclear) to a free loop device: a
    /// persistence file (`ovl.upper=PATH`).
    pub fn attach_read_write(backing: &Path, options: AttachOptions) -> anyhow::Result<Self> {
        Self::attach(backing, options, true)
    }

    fn attach(backing: &Path, options: AttachOptions, writable: bool) -> anyhow::Result<Self> {
        let access = if writable {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let backing_file = rustix::fs::open(backing, access | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| {
                format!(
                    "opening {} to attach it to a loop device",
                    backing.display()
                )
            })?;
        let control = rustix::fs::open(
            "/dev/loop-control",
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .context("opening /dev/loop-control (is the loop driver loaded?)")?;

        let mut last_busy = None;
        for _ in 0..MAX_ATTACH_ATTEMPTS {
            let number = get_free_number(control.as_fd())
                .context("asking /dev/loop-control for a free loop device")?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = match open_loop_node(number, &path, access) {
                Ok(device) => device,
                // ENXIO: the device is being torn down (another process removed or
                // auto-cleared it after GET_FREE); the next GET_FREE gives another.
                Err(e) if e.downcast_ref::<Errno>() == Some(&Errno::NXIO) => {
                    log::debug!("{} is going away, retrying", path.display());
                    last_busy = Some(path);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match configure(
                device.as_fd(),
                backing_file.as_fd(),
                backing,
                options,
                writable,
            ) {
                Ok(()) => {
                    log::debug!(
                        "attached {} to {} {}",
                        backing.display(),
                        path.display(),
                        if writable { "read-write" } else { "read-only" }
                    );
                    return Ok(LoopDevice {
                        number,
                        path,
                        device: Some(device),
                    });
                }
                // Someone else bound this device between GET_FREE and our
                // configure; the next GET_FREE returns another one.
                Err(Errno::BUSY) => {
                    log::debug!("{} was taken by another process, retrying", path.display());
                    last_busy = Some(path);
                }
                Err(errno) => {
                    return Err(errno).with_context(|| {
                        format!("attaching {} to {}", backing.display(), path.display())
                    })
                }
            }
        }
        bail!(
            "attaching {}: every free loop device was taken by another process \
             ({MAX_ATTACH_ATTEMPTS} attempts, last {})",
            backing.display(),
            last_busy
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    }

    /// The device number N of `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The device node, e.g. `/dev/loop0`, to pass to `mount(2)`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the block layer reports the device read-only (`BLKROGET`).
    pub fn is_read_only(&self) -> anyhow::Result<bool> {
        let device = self
            .device
            .as_ref()
            .expect("device fd is present until drop");
        block_read_only(device.as_fd())
            .with_context(|| format!("reading the read-only flag of {}", self.path.display()))
    }

    /// Whether the kernel is doing direct I/O on the backing file.
    pub fn direct_io(&self) -> bool {
        fs::read_to_string(format!("/sys/block/loop{}/loop/dio", self.number))
            .is_ok_and(|s| s.trim() == "1")
    }

    /// Stop managing the device: close our handle without detaching. With
    /// autoclear the kernel detaches it once the last user (the mount made on
    /// it) is gone — so call this only after mounting, or it vanishes at once.
    pub fn keep(mut self) {
        self.device = None;
    }

    /// Detach now, reporting errors (drop does the same but can only log them).
    pub fn detach(mut self) -> anyhow::Result<()> {
        let device = self.device.take().expect("device fd is present until drop");
        loop_clr_fd(device.as_fd()).with_context(|| format!("detaching {}", self.path.display()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(device) = self.device.take() {
            // If a mount still uses the device, the kernel only marks it for
            // autoclear and succeeds; the detach happens at unmount.
            if let Err(errno) = loop_clr_fd(device.as_fd()) {
                log::warn!("detaching {}: {errno}", self.path.display());
            }
        }
    }
}

/// Bind `backing_file` to the loop device open at `device`, with autoclear
/// and read-only unless `writable`, via LOOP_CONFIGURE or the legacy pair of
/// ioctls (there the backing file's open mode decides).
fn configure(
    device: BorrowedFd<'_>,
    backing_file: BorrowedFd<'_>,
    backing: &Path,
    options: AttachOptions,
    writable: bool,
) -> Result<(), Errno> {
    let base_flags = if writable {
        LO_FLAGS_AUTOCLEAR
    } else {
        LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
    };
    let config = |flags| LoopConfig {
        fd: backing_file.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64::new(flags, backing),
        reserved: [0; 8],
    };
    if options.direct_io {
        match loop_configure(device, config(base_flags | LO_FLAGS_DIRECT_IO)) {
            Ok(()) => return Ok(()),
            // EINVAL: the backing file cannot do direct I/O on kernels that say
            // so instead of falling back — or no LOOP_CONFIGURE at all; the
            // plain attempt below tells the two apart.
            Err(Errno::INVAL) => {}
            Err(errno) => return Err(errno),
        }
    }
    match loop_configure(device, config(base_flags)) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) | Err(Errno::NOTTY) => {
            log::debug!("LOOP_CONFIGURE unsupported, using LOOP_SET_FD");
            configure_legacy(device, backing_file, backing, options)
        }
        Err(errno) => Err(errno),
    }
}

/// Kernels before 5.8: LOOP_SET_FD makes the device read-only because the
/// backing file is open read-only; LOOP_SET_STATUS64 adds autoclear.
fn configure_legacy(
    device: BorrowedFd<'_>,
    backing_file: BorrowedFd<'_>,
    backing: &Path,
    options: AttachOptions,
) -> Result<(), Errno> {
    loop_set_fd(device, backing_file)?;
    if let Err(errno) = loop_set_status64(device, LoopInfo64::new(LO_FLAGS_AUTOCLEAR, backing)) {
        // Without autoclear the device could outlive its mount; undo.
        let _ = loop_clr_fd(device);
        return Err(errno);
    }
    if options.direct_io {
        if let Err(errno) = loop_set_direct_io(device, true) {
            log::debug!("no direct I/O for {}: {errno}", backing.display());
        }
    }
    Ok(())
}

/// Open `/dev/loopN`, creating the node if devtmpfs has not made it (a /dev
/// that is a plain directory, or a race with the kernel's node creation).
/// `access` is RDONLY or RDWR: the kernel makes a device configured through a
/// read-only open read-only, whatever the backing file allows.
fn open_loop_node(number: u32, path: &Path, access: OFlags) -> anyhow::Result<OwnedFd> {
    let flags = access | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) => {}
        Err(errno) => return Err(errno).with_context(|| format!("opening {}", path.display())),
    }
    let (major, minor) = loop_dev_numbers(number);
    log::debug!("creating {} as {major}:{minor}", path.display());
    match rustix::fs::mknodat(
        CWD,
        path,
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(major, minor),
    ) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(errno) => {
            return Err(errno).with_context(|| {
                format!("creating device node {} ({major}:{minor})", path.display())
            })
        }
    }
    rustix::fs::open(path, flags, Mode::empty())
        .with_context(|| format!("opening {}", path.display()))
}

/// The device numbers of loopN: sysfs knows them (the minor is N shifted when
/// the driver was loaded with `max_part`); 7:N is the default layout.
fn loop_dev_numbers(number: u32) -> (u32, u32) {
    fs::read_to_string(format!("/sys/devices/virtual/block/loop{number}/dev"))
        .ok()
        .and_then(|s| parse_dev_numbers(&s))
        .unwrap_or((LOOP_MAJOR, number))
}

/// Parse a sysfs `dev` attribute, `MAJOR:MINOR\n`.
fn parse_dev_numbers(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The loop device name (`loop3`) of a device path such as `/dev/loop3`.
fn loop_name(device: &Path) -> Option<&str> {
    let name = device.file_name()?.to_str()?;
    let digits = name.strip_prefix("loop")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

/// The file a loop device (`/dev/loopN`) is bound to, from sysfs; `None` when
/// the device is free or is not a loop device. The path is as the kernel sees
/// it from our root (`" (deleted)"` appended if the file was unlinked).
pub fn backing_file(device: &Path) -> Option<PathBuf> {
    let name = loop_name(device)?;
    read_backing_file(&Path::new("/sys/block").join(name))
}

fn read_backing_file(sys_block_dir: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(sys_block_dir.join("loop/backing_file")).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// Every bound loop device with its backing file, as `(/dev/loopN, file)`.
pub fn attached_loop_devices() -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let entries = match fs::read_dir("/sys/block") {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).context("listing /sys/block"),
    };
    let mut attached = Vec::new();
    for entry in entries {
        let entry = entry.context("listing /sys/block")?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let device = Path::new("/dev").join(name);
        if loop_name(&device).is_none() {
            continue;
        }
        if let Some(file) = read_backing_file(&entry.path()) {
            attached.push((device, file));
        }
    }
    attached.sort();
    Ok(attached)
}

/// Attach an image file (`ovl.image=`, a file in `ovl.lower=`) read-only,
/// buffered (see [`AttachOptions::direct_io`] for why). The caller detects the
/// filesystem on [`LoopDevice::path`], mounts it read-only, then calls
/// [`LoopDevice::keep`].
pub fn attach_image(path: &Path) -> anyhow::Result<LoopDevice> {
    let metadata = fs::metadata(path).with_context(|| format!("image file {}", path.display()))?;
    if !metadata.is_file() {
        bail!("image {} is not a regular file", path.display());
    }
    if metadata.len() == 0 {
        bail!("image {} is empty", path.display());
    }
    LoopDevice::attach_read_only(path, AttachOptions::default())
        .with_context(|| format!("loop-attaching image {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
    fn blkroget_is_the_value_of_linux_fs_h_on_x86_and_arm() {
        assert_eq!(BLKROGET, 0x125E);
    }

    #[test]
    fn parses_sysfs_dev_attribute() {
        assert_eq!(parse_dev_numbers("7:3\n"), Some((7, 3)));
        assert_eq!(parse_dev_numbers("259:16"), Some((259, 16)));
        assert_eq!(parse_dev_numbers("7"), None);
        assert_eq!(parse_dev_numbers("7:x"), None);
    }

    #[test]
    fn recognises_loop_device_names() {
        assert_eq!(loop_name(Path::new("/dev/loop0")), Some("loop0"));
        assert_eq!(loop_name(Path::new("/dev/loop12")), Some("loop12"));
        assert_eq!(loop_name(Path::new("loop7")), Some("loop7"));
        assert_eq!(loop_name(Path::new("/dev/loop-control")), None);
        assert_eq!(loop_name(Path::new("/dev/loop")), None);
        assert_eq!(loop_name(Path::new("/dev/vda1")), None);
    }

    #[test]
    fn file_name_is_truncated_with_terminating_nul() {
        let long = "/x".repeat(100);
        let info = LoopInfo64::new(LO_FLAGS_READ_ONLY, Path::new(&long));
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 1], 0);
        assert_eq!(&info.lo_file_name[..4], b"/x/x");
        assert_eq!(info.lo_flags, LO_FLAGS_READ_ONLY);
    }
}
