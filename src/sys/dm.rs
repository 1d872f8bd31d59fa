//! Device-mapper over its ioctls (no libdevmapper, no dmsetup/veritysetup).
//!
//! Every command is one ioctl on `/dev/mapper/control` with a `struct dm_ioctl`
//! header followed by its data (<linux/dm-ioctl.h>); the kernel copies in
//! `data_size` bytes and writes its answer back into the same buffer. A device
//! is made in three steps: `DM_DEV_CREATE` (a name and a device number, no
//! table yet), `DM_TABLE_LOAD` (the table goes into the inactive slot) and
//! `DM_DEV_SUSPEND` without the suspend flag, which resumes the device and
//! swaps the loaded table in.
//!
//! Without udev nobody makes `/dev/mapper/NAME`; devtmpfs makes
//! `/dev/mapper/control` (when dm_mod registers it) and `/dev/dm-N` only.
//! [`create_device`] makes the `/dev/mapper/NAME` node itself, from the
//! device number `DM_DEV_CREATE` returns. [`DmDevice`] removes the device (and
//! the node it made) on drop unless [`DmDevice::keep`] was called, so an error
//! between creation and mount leaves nothing behind.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::ioctl::{self, Ioctl, IoctlOutput, Opcode};

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// The interface version we speak; the kernel accepts any request whose major
/// equals its own and whose minor is not newer.
const DM_VERSION_MAJOR: u32 = 4;
const DM_VERSION_MINOR: u32 = 0;

const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_SUSPEND_FLAG: u32 = 1 << 1;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
const DM_DEFERRED_REMOVE: u32 = 1 << 17;

/// The control node (devtmpfs makes it when dm_mod registers its misc device).
pub const CONTROL_PATH: &str = "/dev/mapper/control";
const MAPPER_DIR: &str = "/dev/mapper";

/// `struct dm_ioctl` from <linux/dm-ioctl.h>. Requests are written into a byte
/// buffer at these fields' offsets ([`offset_of!`]) rather than through the
/// struct, because the header is followed by variable-length data in the same
/// buffer; the struct fixes the layout and its size.
#[repr(C)]
#[allow(dead_code)] // layout only: see above
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`: one table line, followed by its NUL-terminated
/// parameters (and, with several targets, padding to 8 bytes before the next).
#[repr(C)]
#[allow(dead_code)] // layout only, like DmIoctl
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

const _: () = assert!(size_of::<DmIoctl>() == 312);
const _: () = assert!(size_of::<DmTargetSpec>() == 40);
const _: () = assert!(offset_of!(DmIoctl, dev) == 40);
const _: () = assert!(offset_of!(DmIoctl, name) == 48);
const _: () = assert!(offset_of!(DmIoctl, uuid) == 176);

const HEADER: usize = size_of::<DmIoctl>();
const SPEC: usize = size_of::<DmTargetSpec>();

/// Command numbers (`enum` in <linux/dm-ioctl.h>); every ioctl is
/// `_IOWR(0xfd, CMD, struct dm_ioctl)`.
const fn dm_opcode(command: u8) -> Opcode {
    ioctl::opcode::read_write::<DmIoctl>(0xfd, command)
}
const DM_VERSION: Opcode = dm_opcode(0);
const DM_DEV_CREATE: Opcode = dm_opcode(3);
const DM_DEV_REMOVE: Opcode = dm_opcode(4);
const DM_DEV_SUSPEND: Opcode = dm_opcode(6);
const DM_TABLE_LOAD: Opcode = dm_opcode(9);
const DM_TABLE_STATUS: Opcode = dm_opcode(12);

/// The usual opcode values, as the kernel header computes them.
const _: () = assert!(DM_VERSION as u64 == 0xc138fd00);
const _: () = assert!(DM_TABLE_STATUS as u64 == 0xc138fd0c);

/// One device-mapper ioctl on a request buffer.
struct DmCall<'a> {
    opcode: Opcode,
    buffer: &'a mut [u8],
}

// SAFETY: every dm ioctl takes a pointer to a `struct dm_ioctl` header that
// starts a buffer of `data_size` bytes. The kernel (`copy_params`) reads the
// header, checks `data_size >= sizeof(struct dm_ioctl)`, copies `data_size`
// bytes in, and on return copies at most `data_size` bytes back. DmRequest
// always sets `data_size` to the buffer's length (>= HEADER), so both copies
// stay inside `buffer`, which is borrowed mutably for the call. Alignment: the
// kernel copies with copy_from_user, which has none to respect.
unsafe impl Ioctl for DmCall<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.buffer.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// A request buffer: the header, then the data.
struct DmRequest {
    buffer: Vec<u8>,
}

impl DmRequest {
    /// A request for device `name` (empty for DM_VERSION) with room for
    /// `data_room` bytes of data or answer after the header.
    fn new(name: &str, flags: u32, data_room: usize) -> Result<Self> {
        check_name(name)?;
        let mut request = DmRequest {
            buffer: vec![0; HEADER + data_room.next_multiple_of(8)],
        };
        let size = request.buffer.len() as u32;
        request.put_u32(offset_of!(DmIoctl, version), DM_VERSION_MAJOR);
        request.put_u32(offset_of!(DmIoctl, version) + 4, DM_VERSION_MINOR);
        request.put_u32(offset_of!(DmIoctl, data_size), size);
        request.put_u32(offset_of!(DmIoctl, data_start), HEADER as u32);
        request.put_u32(offset_of!(DmIoctl, flags), flags);
        let at = offset_of!(DmIoctl, name);
        request.buffer[at..at + name.len()].copy_from_slice(name.as_bytes());
        Ok(request)
    }

    fn put_u32(&mut self, at: usize, value: u32) {
        self.buffer[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, value: u64) {
        self.buffer[at..at + 8].copy_from_slice(&value.to_ne_bytes());
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.buffer[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.buffer[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Append one target at the data start (a single-target table). The
    /// request was made with room for it (see [`Control::load_table`]).
    fn set_target(&mut self, target: &Target) -> Result<()> {
        if target.target_type.is_empty()
            || target.target_type.len() >= DM_MAX_TYPE_NAME
            || target.params.contains('\0')
        {
            bail!(
                "device-mapper target {:?} with parameters {:?} cannot be encoded",
                target.target_type,
                target.params
            );
        }
        let needed = SPEC + target.params.len() + 1;
        self.put_u32(offset_of!(DmIoctl, target_count), 1);
        let spec = HEADER;
        self.put_u64(spec + offset_of!(DmTargetSpec, sector_start), target.start);
        self.put_u64(spec + offset_of!(DmTargetSpec, length), target.sectors);
        self.put_u32(
            spec + offset_of!(DmTargetSpec, next),
            needed.next_multiple_of(8) as u32,
        );
        let at = spec + offset_of!(DmTargetSpec, target_type);
        self.buffer[at..at + target.target_type.len()]
            .copy_from_slice(target.target_type.as_bytes());
        let at = spec + SPEC;
        self.buffer[at..at + target.params.len()].copy_from_slice(target.params.as_bytes());
        Ok(())
    }

    fn call(&mut self, control: BorrowedFd<'_>, opcode: Opcode) -> rustix::io::Result<()> {
        let call = DmCall {
            opcode,
            buffer: &mut self.buffer,
        };
        // SAFETY: see the `Ioctl` impl of DmCall; `data_size` was set to the
        // buffer's length in `new` and the buffer is never resized.
        unsafe { ioctl::ioctl(control, call) }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.len() >= DM_NAME_LEN
        || name.contains('/')
        || name.bytes().any(|b| !b.is_ascii_graphic())
    {
        bail!("device-mapper name {name:?}: at most 127 printable characters, no '/'");
    }
    Ok(())
}

/// One line of a device-mapper table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector (512 bytes) of the mapped device this target covers.
    pub start: u64,
    pub sectors: u64,
    /// `verity`, `linear`, ...
    pub target_type: String,
    pub params: String,
}

/// The open `/dev/mapper/control`.
#[derive(Debug)]
pub struct Control {
    fd: OwnedFd,
}

impl Control {
    /// Open the control node. devtmpfs (which overlay-init mounts on `/dev`)
    /// makes it when device-mapper registers, so there is nothing to create.
    pub fn open() -> Result<Self> {
        let fd = rustix::fs::open(CONTROL_PATH, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .context("opening /dev/mapper/control (device-mapper: dm_mod)")?;
        Ok(Control { fd })
    }

    /// The kernel's device-mapper interface version (`DM_VERSION`).
    pub fn version(&self) -> Result<(u32, u32, u32)> {
        let mut request = DmRequest::new("", 0, 0)?;
        request
            .call(self.fd.as_fd(), DM_VERSION)
            .context("DM_VERSION on /dev/mapper/control")?;
        let at = offset_of!(DmIoctl, version);
        Ok((
            request.u32_at(at),
            request.u32_at(at + 4),
            request.u32_at(at + 8),
        ))
    }

    /// `DM_DEV_CREATE`: a device with no table; returns its (major, minor).
    /// EBUSY: a device of that name exists already.
    pub fn create(&self, name: &str) -> Result<(u32, u32)> {
        let mut request = DmRequest::new(name, 0, 0)?;
        request
            .call(self.fd.as_fd(), DM_DEV_CREATE)
            .with_context(|| format!("creating device-mapper device {name}"))?;
        let dev = request.u64_at(offset_of!(DmIoctl, dev));
        Ok((rustix::fs::major(dev), rustix::fs::minor(dev)))
    }

    /// `DM_TABLE_LOAD` of a one-target table into the inactive slot.
    pub fn load_table(&self, name: &str, target: &Target, read_only: bool) -> Result<()> {
        let flags = if read_only { DM_READONLY_FLAG } else { 0 };
        let mut request = DmRequest::new(name, flags, SPEC + target.params.len() + 1)?;
        request.set_target(target)?;
        request
            .call(self.fd.as_fd(), DM_TABLE_LOAD)
            .with_context(|| {
                format!(
                    "the kernel refused the {} table of {name} (its reason is in the kernel log): \
                 0 {} {} {}",
                    target.target_type, target.sectors, target.target_type, target.params
                )
            })
    }

    /// `DM_DEV_SUSPEND` without the suspend flag: resume, making the loaded
    /// table live.
    pub fn resume(&self, name: &str) -> Result<()> {
        let mut request = DmRequest::new(name, 0, 0)?;
        request
            .call(self.fd.as_fd(), DM_DEV_SUSPEND)
            .with_context(|| format!("resuming device-mapper device {name}"))
    }

    /// `DM_DEV_SUSPEND` with the suspend flag.
    pub fn suspend(&self, name: &str) -> Result<()> {
        let mut request = DmRequest::new(name, DM_SUSPEND_FLAG, 0)?;
        request
            .call(self.fd.as_fd(), DM_DEV_SUSPEND)
            .with_context(|| format!("suspending device-mapper device {name}"))
    }

    /// `DM_DEV_REMOVE`. With `deferred`, a device still open (mounted) is
    /// removed by the kernel when its last user closes it.
    pub fn remove(&self, name: &str, deferred: bool) -> Result<()> {
        let flags = if deferred { DM_DEFERRED_REMOVE } else { 0 };
        let mut request = DmRequest::new(name, flags, 0)?;
        request
            .call(self.fd.as_fd(), DM_DEV_REMOVE)
            .with_context(|| format!("removing device-mapper device {name}"))
    }

    /// `DM_TABLE_STATUS`: each target's status line (for verity: `V` verified
    /// so far, `C` a corruption was detected).
    pub fn status(&self, name: &str) -> Result<Vec<Target>> {
        self.table_status(name, 0)
    }

    /// `DM_TABLE_STATUS` with `DM_STATUS_TABLE_FLAG`: the live table, each
    /// target's parameters as loaded (what `dmsetup table` prints).
    pub fn table(&self, name: &str) -> Result<Vec<Target>> {
        self.table_status(name, DM_STATUS_TABLE_FLAG)
    }

    fn table_status(&self, name: &str, flags: u32) -> Result<Vec<Target>> {
        let mut room = 4096;
        loop {
            let mut request = DmRequest::new(name, flags, room)?;
            request
                .call(self.fd.as_fd(), DM_TABLE_STATUS)
                .with_context(|| format!("reading the status of device-mapper device {name}"))?;
            if request.u32_at(offset_of!(DmIoctl, flags)) & DM_BUFFER_FULL_FLAG != 0 {
                room *= 4;
                if room > 1 << 20 {
                    bail!("the status of {name} does not fit in 1 MiB");
                }
                continue;
            }
            return parse_targets(
                &request.buffer,
                request.u32_at(offset_of!(DmIoctl, target_count)),
            )
            .with_context(|| format!("reading the status of device-mapper device {name}"));
        }
    }
}

/// The targets of an answer buffer: specs from `data_start`, each `next` bytes
/// after the previous one's start (relative to the data start for the first).
fn parse_targets(buffer: &[u8], count: u32) -> Result<Vec<Target>> {
    let at = offset_of!(DmIoctl, data_start);
    let data_start = u32::from_ne_bytes(buffer[at..at + 4].try_into()?) as usize;
    let mut at = data_start;
    let mut targets = Vec::new();
    for _ in 0..count {
        let spec = buffer
            .get(at..at + SPEC)
            .context("device-mapper answer truncated")?;
        let u64_at = |o: usize| u64::from_ne_bytes(spec[o..o + 8].try_into().expect("8 bytes"));
        let next = u32::from_ne_bytes(
            spec[offset_of!(DmTargetSpec, next)..][..4]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let type_field = &spec[offset_of!(DmTargetSpec, target_type)..][..DM_MAX_TYPE_NAME];
        let params = &buffer[at + SPEC..];
        let params_end = params
            .iter()
            .position(|&b| b == 0)
            .context("device-mapper answer: unterminated parameters")?;
        targets.push(Target {
            start: u64_at(offset_of!(DmTargetSpec, sector_start)),
            sectors: u64_at(offset_of!(DmTargetSpec, length)),
            target_type: c_string(type_field),
            params: String::from_utf8_lossy(&params[..params_end]).into_owned(),
        });
        // In answers, `next` is the offset of the next spec from the data start.
        at = data_start + next;
    }
    Ok(targets)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `mknod` the block device node `path` (in `/dev/mapper`, which devtmpfs
/// made with the control node), replacing a stale one.
fn make_node(path: &Path, major: u32, minor: u32) -> Result<()> {
    let _ = rustix::fs::unlink(path);
    rustix::fs::mknodat(
        CWD,
        path,
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )
    .with_context(|| format!("creating device node {}", path.display()))
}

/// A device-mapper device this process created. Removed on drop (with the
/// `/dev/mapper` node made for it) unless [`DmDevice::keep`] was called.
#[derive(Debug)]
pub struct DmDevice {
    name: String,
    path: PathBuf,
    major: u32,
    minor: u32,
    control: Option<Control>,
}

/// Create `name` with a one-target table and make it live; the node is
/// `/dev/mapper/NAME`. Any failure removes what was made.
pub fn create_device(name: &str, target: &Target, read_only: bool) -> Result<DmDevice> {
    let control = Control::open()?;
    let (major, minor) = control.create(name)?;
    let device = DmDevice {
        name: name.to_string(),
        path: Path::new(MAPPER_DIR).join(name),
        major,
        minor,
        control: Some(control),
    };
    let control = device.control.as_ref().expect("set above");
    control.load_table(name, target, read_only)?;
    control.resume(name)?;
    // The node is made from the number the kernel returned: by devtmpfs's
    // /dev/dm-N or udev we would have to wait; mknod is immediate.
    make_node(&device.path, major, minor)?;
    Ok(device)
}

impl DmDevice {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/dev/mapper/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's name for it, `dm-N` (what /sys/block lists).
    pub fn kernel_name(&self) -> String {
        format!("dm-{}", self.minor)
    }

    pub fn dev_numbers(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// The status line of its (first) target.
    pub fn status(&self) -> Result<String> {
        let control = self.control.as_ref().expect("present until drop");
        let targets = control.status(&self.name)?;
        Ok(targets
            .into_iter()
            .next()
            .map(|t| t.params)
            .unwrap_or_default())
    }

    /// Leave the device in place (it is mounted and lives on).
    pub fn keep(mut self) {
        self.control = None;
    }

    /// Remove now, reporting errors (drop does the same but can only log).
    pub fn remove(mut self) -> Result<()> {
        let control = self.control.take().expect("present until drop");
        remove_with_node(&control, &self.name, &self.path)
    }
}

/// Deferred: a device nobody has open goes now, one still open (a mount, a
/// reader) when its last user closes it.
fn remove_with_node(control: &Control, name: &str, path: &Path) -> Result<()> {
    let result = control.remove(name, true);
    let _ = rustix::fs::unlink(path);
    result
}

impl Drop for DmDevice {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            if let Err(e) = remove_with_node(&control, &self.name, &self.path) {
                log::warn!("{e:#}");
            }
        }
    }
}

/// Whether device-mapper is in the kernel now (built in or `dm_mod` loaded).
pub fn available() -> bool {
    Path::new(CONTROL_PATH).exists()
}

/// The size of a block device in bytes (`BLKGETSIZE64`), for the plan's size checks.
pub fn device_bytes(path: &Path) -> Result<u64> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {}", path.display()))?;
    let stat = rustix::fs::fstat(&fd).with_context(|| format!("stat {}", path.display()))?;
    if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
        return Ok(stat.st_size as u64);
    }
    block_size_bytes(fd.as_fd()).with_context(|| format!("reading the size of {}", path.display()))
}

/// `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: Opcode = ioctl::opcode::read::<u64>(0x12, 114);

fn block_size_bytes(fd: BorrowedFd<'_>) -> rustix::io::Result<u64> {
    // SAFETY: BLKGETSIZE64 writes one u64 (`size_t` on 64-bit; the opcode
    // encodes 8 bytes), for which Getter provides storage.
    unsafe { ioctl::ioctl(fd, ioctl::Getter::<BLKGETSIZE64, u64>::new()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verity_target() -> Target {
        Target {
            start: 0,
            sectors: 32,
            target_type: "verity".into(),
            params: "1 7:0 7:1 4096 4096 4 1 sha256 ab -".into(),
        }
    }

    #[test]
    fn request_header_layout() {
        let request = DmRequest::new("ovl-lower", DM_READONLY_FLAG, 100).unwrap();
        let b = &request.buffer;
        assert_eq!(b.len(), 312 + 104);
        assert_eq!(request.u32_at(0), 4, "version major");
        assert_eq!(request.u32_at(12) as usize, b.len(), "data_size");
        assert_eq!(request.u32_at(16), 312, "data_start");
        assert_eq!(request.u32_at(28), DM_READONLY_FLAG);
        assert_eq!(&b[48..57], b"ovl-lower");
        assert_eq!(b[57], 0);
    }

    #[test]
    fn table_load_encodes_one_target_that_parse_targets_reads_back() {
        let target = verity_target();
        let mut request =
            DmRequest::new("x", DM_READONLY_FLAG, SPEC + target.params.len() + 1).unwrap();
        request.set_target(&target).unwrap();
        assert_eq!(request.u32_at(offset_of!(DmIoctl, target_count)), 1);
        assert_eq!(&request.buffer[312 + 24..312 + 30], b"verity");
        assert_eq!(parse_targets(&request.buffer, 1).unwrap(), vec![target]);
    }

    #[test]
    fn bad_names_and_targets_are_refused_before_the_kernel() {
        assert!(DmRequest::new("a/b", 0, 0).is_err());
        assert!(DmRequest::new(&"x".repeat(128), 0, 0).is_err());
        assert!(DmRequest::new("has space", 0, 0).is_err());
        let mut long_type = verity_target();
        long_type.target_type = "x".repeat(16);
        assert!(DmRequest::new("x", 0, 200)
            .unwrap()
            .set_target(&long_type)
            .is_err());
    }
}
