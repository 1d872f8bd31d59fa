//! Open a dm-verity device over a lower: read the superblock, plan the table
//! ([`crate::verity::plan_table`]), create the device ([`super::dm`]), and read
//! its first block so a wrong root hash fails here, by name, instead of as a
//! bare I/O error inside the filesystem mount.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::dm::{self, DmDevice, Target};
use super::io::{read_head, FileSource};
use crate::probe::source::ByteSource;
use crate::probe::verity::{self as sb, VeritySuperblock};
use crate::verity::{
    parse_table_params, plan_table, LiveTable, OnError, RootHash, VeritySpec, TARGET_TYPE,
};

/// What to verify: devices by path (block devices), the rest as in [`VeritySpec`].
#[derive(Debug, Clone)]
pub struct OpenRequest<'a> {
    /// The device-mapper name (`crate::verity::MAIN_DM_NAME`, ...).
    pub name: &'a str,
    pub data: &'a Path,
    /// The hash device; the data device itself for an appended tree.
    pub hash: &'a Path,
    pub hash_offset: u64,
    pub root_hash: &'a RootHash,
    pub on_error: OnError,
}

/// A live, checked verity device.
#[derive(Debug)]
pub struct VerifiedDevice {
    pub device: DmDevice,
    pub superblock: VeritySuperblock,
    /// The table loaded (with `request.on_error`).
    pub target: Target,
}

/// Read the verity superblock at `offset` of `hash`.
pub fn read_superblock(hash: &Path, offset: u64) -> Result<VeritySuperblock> {
    let buf = FileSource::open(hash)?.read_at(offset, sb::SUPERBLOCK_BYTES)?;
    let why = match sb::read(&buf) {
        Ok(Some(superblock)) => return Ok(superblock),
        Ok(None) => "no verity superblock (wrong ovl.verity_hash= or ovl.verity_hashoffset=, \
                     or made with veritysetup --no-superblock)"
            .to_string(),
        Err(e) => e.to_string(),
    };
    bail!("{} at offset {offset}: {why}", hash.display())
}

/// Set up `request.name` over the data device and check the root hash by
/// reading the first data block. On any failure nothing is left behind.
pub fn open(request: &OpenRequest<'_>) -> Result<VerifiedDevice> {
    let superblock = read_superblock(request.hash, request.hash_offset)?;
    // The table names the devices by path: the kernel resolves it (and
    // refuses what is not a block device), and the line reads as given.
    let spec = VeritySpec {
        data_device: request.data.display().to_string(),
        hash_device: request.hash.display().to_string(),
        hash_offset: request.hash_offset,
        root_hash: request.root_hash.clone(),
        on_error: request.on_error,
    };
    // Sizes are the kernel's to check (its reason goes to the kernel log):
    // `check_sizes` would say it better, but costs the init too much.
    let table = plan_table(&spec, &superblock).map_err(anyhow::Error::msg)?;
    let target = Target {
        start: 0,
        sectors: table.sectors,
        target_type: TARGET_TYPE.into(),
        params: table.params,
    };
    let device = dm::create_device(request.name, &target, true).with_context(|| {
        format!(
            "setting up dm-verity {} over {}",
            request.name,
            request.data.display()
        )
    })?;
    check_first_block(&device, &superblock, request)?;
    Ok(VerifiedDevice {
        device,
        superblock,
        target,
    })
}

/// Read data block 0 through the verity device: its hash chain goes up to
/// the root, so a wrong root hash (or a corrupt block 0 or hash block) gives EIO.
fn check_first_block(
    device: &DmDevice,
    superblock: &VeritySuperblock,
    request: &OpenRequest<'_>,
) -> Result<()> {
    let mut block = vec![0u8; superblock.data_block_size as usize];
    let result = File::open(device.path()).and_then(|mut f| f.read_exact(&mut block));
    if let Err(e) = result {
        bail!(
            "dm-verity {}: the first block of {} does not verify against root hash {} \
             with the hash tree on {} at offset {} ({e}): wrong root hash, or the image or \
             its hash tree is corrupt",
            request.name,
            request.data.display(),
            request.root_hash,
            request.hash.display(),
            request.hash_offset,
        )
    }
    Ok(())
}

/// Make sure device-mapper and the verity target can be used, loading
/// [`crate::verity::MODULES`] (and what they need) from the initramfs's module
/// index when they are not there yet. Call before [`open`].
pub fn ensure_modules() -> Result<()> {
    if !Path::new("/sys/module/dm_verity").exists() {
        for name in crate::verity::MODULES {
            let _ = super::modules::load_on_demand(name);
        }
    }
    if !dm::available() {
        bail!(
            "device-mapper is not available (no /dev/mapper/control): dm-verity needs dm_mod \
             and dm_verity, built in or as modules in the initramfs"
        );
    }
    Ok(())
}

/// The hash offset of a tree appended to `data` right after its filesystem
/// (squashfs, erofs, ext4), for an extra lower given as `SPEC@ROOTHASH`:
/// the filesystem's end from its superblock, rounded up to 4 KiB.
pub fn find_appended_tree(data: &Path) -> Result<u64> {
    let buf = read_head(data, 2048)?;
    let end = sb::filesystem_end(&buf).with_context(|| {
        format!(
            "cannot tell where the filesystem on {} ends (squashfs, erofs or ext4 expected), \
             so where its hash tree starts",
            data.display()
        )
    })?;
    Ok(sb::appended_hash_offset(end))
}

/// A live verity device, for `overlay-init status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityState {
    pub table: LiveTable,
    /// `V`: every block read so far verified; `C`: a corruption was seen.
    pub corrupted: bool,
}

/// The verity state of device-mapper device `name`; `Ok(None)` when there is
/// no such device (or device-mapper is not in the kernel): the lower is not verified.
pub fn describe(name: &str) -> Result<Option<VerityState>> {
    if !dm::available() {
        return Ok(None);
    }
    let control = dm::Control::open()?;
    let table = match control.table(name) {
        Ok(targets) => targets,
        Err(e) if e.downcast_ref::<rustix::io::Errno>() == Some(&rustix::io::Errno::NXIO) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let Some(target) = table.iter().find(|t| t.target_type == TARGET_TYPE) else {
        return Ok(None);
    };
    let live = parse_table_params(&target.params).with_context(|| {
        format!(
            "device-mapper {name}: unexpected verity table {:?}",
            target.params
        )
    })?;
    let status = control.status(name)?;
    let corrupted = status
        .iter()
        .any(|t| t.target_type == TARGET_TYPE && t.params.trim() == "C");
    Ok(Some(VerityState {
        table: live,
        corrupted,
    }))
}

/// Read the rest of `file` and drop the bytes: every block of it passes the
/// verity check once.
pub fn read_rest(mut file: File) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Switch the live verity device `name`, set up by [`open`] with `eio` and
/// the table `target`, to `mode`: a table reload, swapped in by the resume
/// (the kernel suspends the device around the swap).
pub fn set_on_error(name: &str, target: &Target, mode: OnError) -> Result<()> {
    let Some(arg) = mode.table_arg() else {
        return Ok(());
    };
    let params = format!("{} 1 {arg}", target.params);
    let control = dm::Control::open()?;
    control.load_table(
        name,
        &Target {
            params,
            ..target.clone()
        },
        true,
    )?;
    control.resume(name)
}
