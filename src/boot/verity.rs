//! dm-verity in the boot: the verified main lower (`ovl.verity=`), verified
//! extra lowers (`ovl.lower=SPEC@ROOTHASH`), and the init read back through
//! verification before the handover. The plan is [`crate::verity`], the
//! device-mapper calls [`crate::sys::verity`]; this is the glue the steps call.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmdline::Config;
use crate::sys::verity::{self as dmv, OpenRequest};
use crate::verity::{extra_dm_name, OnError, RootHash, MAIN_DM_NAME};

/// What a corrupted block read after boot does. A failsafe boot asked for
/// before any device is touched (`ovl.failsafe`, the key) always uses `eio`:
/// it runs on the same lower, and a block that restarted or panicked the
/// machine at every boot must not do it there too (see docs/verity.md).
pub fn on_error(config: &Config, early_failsafe: bool) -> OnError {
    match &config.verity {
        Some(_) if early_failsafe => OnError::Eio,
        Some(v) => v.on_error,
        None => OnError::Eio,
    }
}

/// Set up the verity device `name` over `data` (the tree on `hash`, at
/// `hash_offset`) and return the device to mount. The device stays after
/// the boot: the mount holds it.
fn open(
    name: &str,
    data: &Path,
    hash: &Path,
    hash_offset: u64,
    root_hash: &RootHash,
    on_error: OnError,
) -> Result<PathBuf> {
    dmv::ensure_modules()?;
    let verified = dmv::open(&OpenRequest {
        name,
        data,
        hash,
        hash_offset,
        root_hash,
        on_error,
    })?;
    let path = verified.device.path().to_path_buf();
    log::info!(
        "dm-verity: {} verifies {} (root hash {root_hash}, on error {})",
        path.display(),
        data.display(),
        on_error.name()
    );
    verified.device.keep();
    Ok(path)
}

/// The main lower with `ovl.verity=`: `data` is `root=` (or the loop device
/// of `ovl.image=`), `hash` the `ovl.verity_hash=` device if one was named.
/// Returns the device to mount (`data` itself without `ovl.verity=`).
pub fn main_lower(
    config: &Config,
    data: &Path,
    hash: Option<&Path>,
    on_error: OnError,
) -> Result<PathBuf> {
    let Some(v) = &config.verity else {
        return Ok(data.to_path_buf());
    };
    open(
        MAIN_DM_NAME,
        data,
        hash.unwrap_or(data),
        v.hash_offset,
        &v.root_hash,
        on_error,
    )
}

/// Extra lower number `n` (`ovl.lower=SPEC@ROOTHASH`): its tree is appended,
/// right after the filesystem. Returns the device to mount (`data` itself
/// when the entry has no root hash).
pub fn extra_lower(config: &Config, n: usize, data: &Path, on_error: OnError) -> Result<PathBuf> {
    let Some(Some(root_hash)) = config.lower_hashes.get(n) else {
        return Ok(data.to_path_buf());
    };
    let offset = dmv::find_appended_tree(data)?;
    open(&extra_dm_name(n), data, data, offset, root_hash, on_error)
        .with_context(|| format!("ovl.lower= entry {}", n + 1))
}

/// With a verified lower, read the whole real init once before the handover:
/// a corrupted block in it fails the boot here, by name, instead of killing
/// PID 1 with SIGBUS (a kernel panic) when the page is first executed.
pub fn check_init(config: &Config, new_root: &Path, init: &str) -> Result<()> {
    if config.verity.is_none() && config.lower_hashes.iter().all(Option::is_none) {
        return Ok(());
    }
    dmv::read_whole(new_root, init).with_context(|| {
        format!(
            "the real init {init} does not read back through dm-verity: a block of it \
             does not match the verified image (verity status of {MAIN_DM_NAME}: {})",
            match dmv::describe(MAIN_DM_NAME) {
                Ok(Some(s)) if s.corrupted => "C, corruption seen",
                Ok(Some(_)) => "V",
                _ => "unknown",
            }
        )
    })
}
