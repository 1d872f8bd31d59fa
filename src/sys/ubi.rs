//! UBI for a UBIFS upper (`ovl.upper=ubi0:NAME` / `ubi:NAME`, `ovl.ubiattach=`):
//! attach an MTD partition to UBI (`UBI_IOCATT` on `/dev/ubi_ctrl`, what
//! `ubiattach` does), find a volume by name in sysfs, and create one
//! (`UBI_IOCMKVOL` on `/dev/ubiN`, what `ubimkvol` does).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::ioctl::{self, opcode, Opcode, Updater};

use crate::upperparams::UBI_VOL_NAME_MAX;

/// `struct ubi_attach_req` from <mtd/ubi-user.h>.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UbiAttachReq {
    ubi_num: i32,
    mtd_num: i32,
    vid_hdr_offset: i32,
    max_beb_per1024: i16,
    disable_fm: i8,
    need_resv_pool: i8,
    padding: [i8; 8],
}

/// `struct ubi_mkvol_req` from <mtd/ubi-user.h> (`__packed`).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct UbiMkvolReq {
    vol_id: i32,
    alignment: i32,
    bytes: i64,
    vol_type: i8,
    flags: u8,
    name_len: i16,
    padding2: [i8; 4],
    name: [u8; UBI_VOL_NAME_MAX + 1],
}

const _: () = assert!(std::mem::size_of::<UbiAttachReq>() == 24);
const _: () = assert!(std::mem::size_of::<UbiMkvolReq>() == 152);

/// `_IOW('o', 64, struct ubi_attach_req)` on `/dev/ubi_ctrl`.
const UBI_IOCATT: Opcode = opcode::write::<UbiAttachReq>(b'o', 64);
/// `_IOW('o', 0, struct ubi_mkvol_req)` on `/dev/ubiN`.
const UBI_IOCMKVOL: Opcode = opcode::write::<UbiMkvolReq>(b'o', 0);

/// `UBI_DEV_NUM_AUTO`, `UBI_VOL_NUM_AUTO`: let the kernel pick.
const NUM_AUTO: i32 = -1;
/// `UBI_DYNAMIC_VOLUME`: a read-write volume (UBIFS needs one).
const UBI_DYNAMIC_VOLUME: i8 = 3;

const SYS_CLASS_UBI: &str = "/sys/class/ubi";

fn read_number(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a number: {:?}", path.display(), text.trim()))
}

/// The UBI device numbers sysfs lists (`/sys/class/ubi/ubiN`), in order.
pub fn devices() -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(SYS_CLASS_UBI)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            crate::flashupper::parse_ubi_sysfs_name(&entry.file_name().to_string_lossy())
        })
        .filter_map(|(device, volume)| volume.is_none().then_some(device))
        .collect();
    found.sort_unstable();
    found
}

/// The MTD partition UBI device `ubi` is attached to.
pub fn mtd_of(ubi: u32) -> Result<u32> {
    let n = read_number(&Path::new(SYS_CLASS_UBI).join(format!("ubi{ubi}/mtd_num")))?;
    Ok(n as u32)
}

/// Wait until UBI device `ubi` exists (attached by the kernel's `ubi.mtd=`, or
/// a UBI module loaded just now), up to `timeout`; polls every 20 ms.
pub fn wait_for_device(ubi: u32, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let dir = Path::new(SYS_CLASS_UBI).join(format!("ubi{ubi}"));
    while !dir.exists() {
        if started.elapsed() >= timeout {
            bail!(
                "no UBI device ubi{ubi} after {} s (ovl.timeout=; attach one with ubi.mtd= or ovl.ubiattach=)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Attach MTD partition `mtd` to UBI (an empty one is formatted by the kernel
/// as it attaches); returns the new UBI device number.
pub fn attach(mtd: u32) -> Result<u32> {
    let ctrl = File::options()
        .read(true)
        .write(true)
        .open("/dev/ubi_ctrl")
        .context("open /dev/ubi_ctrl (CONFIG_MTD_UBI)")?;
    let mut req = UbiAttachReq {
        ubi_num: NUM_AUTO,
        mtd_num: mtd as i32,
        vid_hdr_offset: 0,
        max_beb_per1024: 0,
        disable_fm: 0,
        need_resv_pool: 0,
        padding: [0; 8],
    };
    ubi_attach(ctrl.as_fd(), &mut req)
        .with_context(|| format!("UBI_IOCATT: attach /dev/mtd{mtd} to UBI"))?;
    Ok(req.ubi_num as u32)
}

/// One volume of a UBI device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: u32,
    pub name: String,
}

/// The volumes of UBI device `ubi` (`/sys/class/ubi/ubiN_M/name`).
pub fn volumes(ubi: u32) -> Result<Vec<Volume>> {
    let dir = Path::new(SYS_CLASS_UBI).join(format!("ubi{ubi}"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((device, Some(id))) = crate::flashupper::parse_ubi_sysfs_name(&name) else {
            continue;
        };
        if device != ubi {
            continue;
        }
        let path = entry.path().join("name");
        let volume_name =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        found.push(Volume {
            id,
            name: volume_name.trim_end_matches('\n').to_string(),
        });
    }
    found.sort_by_key(|v| v.id);
    Ok(found)
}

/// The bytes a new volume can have on UBI device `ubi`: every available
/// logical erase block.
pub fn available_bytes(ubi: u32) -> Result<u64> {
    let dir = Path::new(SYS_CLASS_UBI).join(format!("ubi{ubi}"));
    let blocks = read_number(&dir.join("avail_eraseblocks"))?;
    let leb = read_number(&dir.join("eraseblock_size"))?;
    Ok(blocks * leb)
}

/// Create the dynamic volume `name` of `bytes` on UBI device `ubi`; returns its id.
pub fn make_volume(ubi: u32, name: &str, bytes: u64) -> Result<u32> {
    let path = PathBuf::from(format!("/dev/ubi{ubi}"));
    let device = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    if name.len() > UBI_VOL_NAME_MAX {
        bail!("UBI volume name {name:?} is longer than {UBI_VOL_NAME_MAX} bytes");
    }
    let mut req = UbiMkvolReq {
        vol_id: NUM_AUTO,
        alignment: 1,
        bytes: bytes as i64,
        vol_type: UBI_DYNAMIC_VOLUME,
        flags: 0,
        name_len: name.len() as i16,
        padding2: [0; 4],
        name: [0; UBI_VOL_NAME_MAX + 1],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    ubi_mkvol(device.as_fd(), &mut req).with_context(|| {
        format!("UBI_IOCMKVOL: create the volume {name:?} ({bytes} bytes) on ubi{ubi}")
    })?;
    let id = req.vol_id;
    Ok(id as u32)
}

/// The first `len` bytes of volume `id` of UBI device `ubi` (`/dev/ubiN_M`;
/// an unwritten block reads as `0xFF`).
pub fn read_volume_start(ubi: u32, id: u32, len: usize) -> Result<Vec<u8>> {
    let path = PathBuf::from(format!("/dev/ubi{ubi}_{id}"));
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file
            .read_at(&mut buf[filled..], filled as u64)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

fn ubi_attach(fd: BorrowedFd<'_>, req: &mut UbiAttachReq) -> rustix::io::Result<()> {
    // SAFETY: UBI_IOCATT reads one `struct ubi_attach_req`, mirrored by
    // UbiAttachReq (size checked at compile time), and writes the new device
    // number back into its first field; `req` is valid and exclusively
    // borrowed for the call.
    unsafe { ioctl::ioctl(fd, Updater::<UBI_IOCATT, UbiAttachReq>::new(req)) }
}

fn ubi_mkvol(fd: BorrowedFd<'_>, req: &mut UbiMkvolReq) -> rustix::io::Result<()> {
    // SAFETY: UBI_IOCMKVOL reads one packed `struct ubi_mkvol_req`, mirrored by
    // UbiMkvolReq (size checked at compile time), and writes the new volume id
    // back into its first field; `req` is valid and exclusively borrowed.
    unsafe { ioctl::ioctl(fd, Updater::<UBI_IOCMKVOL, UbiMkvolReq>::new(req)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opcodes as <mtd/ubi-user.h> encodes them on x86 and arm.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "x86"))]
    fn opcodes_match_the_kernel_headers() {
        assert_eq!(UBI_IOCATT, 0x4018_6f40);
        assert_eq!(UBI_IOCMKVOL, 0x4098_6f00);
    }
}
