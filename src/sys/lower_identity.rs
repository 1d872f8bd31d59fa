//! Reading a lower's identity from the kernel: the device's metadata (through
//! [`crate::upgrade::identity::metadata_hash`]) and the mounted lower's
//! os-release, resolved inside the lower (an absolute symlink such as
//! `/etc/os-release -> /usr/lib/os-release` stays in the image).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::upgrade::identity::{metadata_hash, parse_os_release, LowerIdentity, OsVersion, ReadAt};

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// The os-release of a mounted lower: `etc/os-release`, else
/// `usr/lib/os-release`, each resolved with `RESOLVE_IN_ROOT`. Empty when
/// neither exists.
pub fn os_release(lower_root: &Path) -> Result<OsVersion> {
    let root = crate::sys::dirfd::open_dir(lower_root)?;
    for name in [c"etc/os-release", c"usr/lib/os-release"] {
        match openat2(
            &root,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => {
                let file = File::from(fd);
                let mut buf = vec![0u8; 64 << 10];
                let mut got = 0;
                while got < buf.len() {
                    let n = FileExt::read_at(&file, &mut buf[got..], got as u64)
                        .with_context(|| format!("read {name:?} in {}", lower_root.display()))?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                return Ok(parse_os_release(&String::from_utf8_lossy(&buf[..got])));
            }
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("open {name:?} in {}", lower_root.display()))
            }
        }
    }
    Ok(OsVersion::default())
}

/// The identity of the lower on `dev` (a block device or an image file),
/// mounted at `lower_root`, and how long computing it took.
pub fn identify(dev: &Path, lower_root: &Path) -> Result<(LowerIdentity, Duration)> {
    let began = Instant::now();
    let file = File::open(dev).with_context(|| format!("open {}", dev.display()))?;
    let meta = metadata_hash(&file).with_context(|| format!("identity of {}", dev.display()))?;
    let version = os_release(lower_root)?;
    Ok((
        LowerIdentity {
            fstype: meta.fstype.to_string(),
            uuid: meta.uuid,
            meta_sha256: meta.sha256,
            meta_bytes: meta.bytes,
            version,
        },
        began.elapsed(),
    ))
}

/// The device node of the block device numbered `dev` (a mounted lower's
/// `st_dev`): `/dev/` + `DEVNAME` from `/sys/dev/block/MAJ:MIN/uevent`.
pub fn device_node(dev: u64) -> Result<std::path::PathBuf> {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
    let text = std::fs::read_to_string(&uevent)
        .with_context(|| format!("read {uevent} (is the lower on a block device?)"))?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .with_context(|| format!("{uevent} names no DEVNAME"))?;
    if name.split('/').any(|c| c == ".." || c.is_empty()) {
        anyhow::bail!("{uevent}: odd DEVNAME {name:?}");
    }
    Ok(Path::new("/dev").join(name))
}
