//! dm-verity in the boot: the verified main lower (`ovl.verity=`), verified
//! extra lowers (`ovl.lower=SPEC@ROOTHASH`), and the init read back through
//! verification before the handover. The plan is [`crate::verity`], the
//! device-mapper calls [`crate::sys::verity`]; this is the glue the steps call.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::boot::upper::UpperKind;
use crate::cmdline::Config;
use crate::sys::dm::Target;
use crate::sys::verity::{self as dmv, OpenRequest};
use crate::verity::{extra_dm_name, OnError, RootHash, MAIN_DM_NAME};

/// The verity devices this boot set up, with their tables (all `eio`).
static OPENED: std::sync::Mutex<Vec<(String, Target)>> = std::sync::Mutex::new(Vec::new());

/// Set up the verity device `name` over `data` (the tree on `hash`, at
/// `hash_offset`) and return the device to mount. The device stays after
/// the boot: the mount holds it.
fn open(
    name: &str,
    data: &Path,
    hash: &Path,
    hash_offset: u64,
    root_hash: &RootHash,
) -> Result<PathBuf> {
    dmv::ensure_modules()?;
    let verified = dmv::open(&OpenRequest {
        name,
        data,
        hash,
        hash_offset,
        root_hash,
        on_error: OnError::Eio,
    })?;
    let path = verified.device.path().to_path_buf();
    OPENED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.to_string(), verified.target));
    log::info!(
        "dm-verity: {} verifies {} (root hash {root_hash})",
        path.display(),
        data.display()
    );
    verified.device.keep();
    Ok(path)
}

/// The main lower with `ovl.verity=`: `data` is `root=` (or the loop device
/// of `ovl.image=`), `hash` the `ovl.verity_hash=` device if one was named.
/// Returns the device to mount (`data` itself without `ovl.verity=`).
pub fn main_lower(config: &Config, data: &Path, hash: Option<&Path>) -> Result<PathBuf> {
    let Some(v) = &config.verity else {
        return Ok(data.to_path_buf());
    };
    open(
        MAIN_DM_NAME,
        data,
        hash.unwrap_or(data),
        v.hash_offset,
        &v.root_hash,
    )
}

/// Extra lower number `n` (`ovl.lower=SPEC@ROOTHASH`): its tree is appended,
/// right after the filesystem. Returns the device to mount (`data` itself
/// when the entry has no root hash).
pub fn extra_lower(config: &Config, n: usize, data: &Path) -> Result<PathBuf> {
    let Some(Some(root_hash)) = config.lower_hashes.get(n) else {
        return Ok(data.to_path_buf());
    };
    let offset = dmv::find_appended_tree(data)?;
    open(&extra_dm_name(n), data, data, offset, root_hash)
        .with_context(|| format!("ovl.lower= entry {}", n + 1))
}

/// The "record boot" step, once this boot is counted: switch the verity
/// devices to what `ovl.verity_onerror=` asks for (they were set up with
/// `eio`, so a bad block found during the boot gets a message and
/// `ovl.onfail=`, never a restart before the boot counter knows of it). A
/// failsafe boot stays at `eio`: it runs on the same lower, and a block that
/// restarted the machine at every boot must let it come up (docs/verity.md).
pub fn arm_on_error(config: &Config, upper: &UpperKind) {
    let Some(mode) = config.verity.as_ref().map(|v| v.on_error) else {
        return;
    };
    if mode == OnError::Eio {
        return;
    }
    if matches!(upper, UpperKind::Failsafe { .. }) {
        log::warn!(
            "failsafe: dm-verity stays at eio (ovl.verity_onerror={} is for normal boots)",
            mode.name()
        );
        return;
    }
    for (name, target) in OPENED.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        match dmv::set_on_error(name, target, mode) {
            Ok(()) => log::info!(
                "dm-verity {name}: ovl.verity_onerror={} from now on",
                mode.name()
            ),
            Err(e) => log::warn!("dm-verity {name}: still eio, not {}: {e:#}", mode.name()),
        }
    }
}

/// With a verified lower, read the whole real init once before the handover:
/// a corrupted block in it fails the boot here, by name, instead of killing
/// PID 1 with SIGBUS (a kernel panic) when the page is first executed.
/// `file` is the init as `sys::switch::check_init` opened it (inside the new
/// root, its symlinks followed).
pub fn check_init(config: &Config, file: std::fs::File, init: &str) -> Result<()> {
    if config.verity.is_none() && config.lower_hashes.iter().all(Option::is_none) {
        return Ok(());
    }
    dmv::read_rest(file).with_context(|| {
        format!(
            "the real init {init} does not read back through dm-verity: a block of it \
             does not match the verified image (the kernel log names it)"
        )
    })
}
