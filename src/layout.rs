//! The on-disk layout, spelled once: where the layers appear in the new root,
//! what overlay-init keeps on the upper's filesystem, and what it leaves in
//! `/run/overlay-init` for the running system.
//!
//! ```text
//! /rom                         the main lower, read-only
//! /overlay                     the upper's filesystem:
//!   upper/                       the overlay's upperdir
//!   work/                        the overlay's workdir
//!   .overlay-init/reset-request  a pending factory reset
//!   .overlay-init/trash/GEN/     what earlier resets took out of the overlay's view
//!   .overlay-init/bootcount      boot attempts since the last `mark-good`
//! /run/overlay-init/           state, lowerN, image-host, failsafe-upper
//! ```
//!
//! Names used with `*at` calls on directory fds come as `CStr` too (`*_C`);
//! a unit test keeps both spellings equal.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// The main lower, in the new root (relative: [`ROM_NAME`]).
pub const ROM: &str = "/rom";
pub const ROM_NAME: &str = "rom";
/// The upper's filesystem, in the new root (relative: [`OVERLAY_NAME`]).
pub const OVERLAY: &str = "/overlay";
pub const OVERLAY_NAME: &str = "overlay";

/// On the upper's filesystem: the overlay's upperdir and workdir.
pub const UPPER: &str = "upper";
pub const UPPER_C: &CStr = c"upper";
pub const WORK: &str = "work";
pub const WORK_C: &CStr = c"work";
/// On the upper's filesystem, for a moment: where a flash upper is tested for
/// `RENAME_EXCHANGE` (see `sys::upperfs::supports_rename_exchange`).
pub const RENAME_PROBE: &str = ".overlay-init-rename-probe";
/// On the upper's filesystem: overlay-init's own state, outside the overlay's view.
pub const STATE_DIR: &str = ".overlay-init";
pub const STATE_DIR_C: &CStr = c".overlay-init";
/// In [`STATE_DIR`]: a pending factory reset.
pub const RESET_REQUEST: &str = "reset-request";
pub const RESET_REQUEST_C: &CStr = c"reset-request";
/// In [`STATE_DIR`]: reset generations waiting to be removed.
pub const TRASH: &str = "trash";
pub const TRASH_C: &CStr = c"trash";
/// In [`STATE_DIR`]: the boot-attempt counter.
pub const BOOTCOUNT: &str = "bootcount";
pub const BOOTCOUNT_C: &CStr = c"bootcount";

/// In [`STATE_DIR`]: the lowers' identity at the last boot (`upgrade::identity`).
pub const LOWER_IDENTITY: &str = "lower-identity";
/// In [`STATE_DIR`]: the last lower change seen and what `ovl.upgrade=` did.
pub const LAST_UPGRADE: &str = "last-upgrade";
pub const LAST_UPGRADE_C: &CStr = c"last-upgrade";

/// Mounts and state that stay visible in the running system (`/run` moves
/// into the new root).
pub const RUN_DIR: &str = "/run/overlay-init";
/// This boot's state, for `overlay-init status`.
pub const STATE_FILE: &str = "/run/overlay-init/state";
/// This boot's lower identity and upgrade handling, for `overlay-init status`.
pub const UPGRADE_STATE_FILE: &str = "/run/overlay-init/upgrade";
/// Upper entries that shadow a path of a changed lower (`ovl.upgrade=keep|prune`).
pub const SHADOWED_FILE: &str = "/run/overlay-init/shadowed";
/// In [`RUN_DIR`] (or the staging's keep dir): a failsafe boot's changes.
pub const FAILSAFE_UPPER: &str = "failsafe-upper";
/// In [`RUN_DIR`]: the filesystem holding an `ovl.image=` file.
pub const IMAGE_HOST: &str = "image-host";
/// In [`RUN_DIR`]: the tmpfs holding the `ovl.image=` file copied by `ovl.toram`.
pub const TORAM: &str = "toram";

/// In [`RUN_DIR`]: extra lower number `n` (0-based, in `ovl.lower=` order).
pub fn extra_lower_name(n: usize) -> String {
    format!("lower{n}")
}

/// The overlay's upperdir on the upper's filesystem at `upper_fs`.
pub fn upperdir(upper_fs: &Path) -> PathBuf {
    upper_fs.join(UPPER)
}

/// The overlay's workdir on the upper's filesystem at `upper_fs`.
pub fn workdir(upper_fs: &Path) -> PathBuf {
    upper_fs.join(WORK)
}

/// overlay-init's state directory on the upper's filesystem.
pub fn state_dir(upper_fs: &Path) -> PathBuf {
    upper_fs.join(STATE_DIR)
}

/// Where reset generations wait to be removed.
pub fn trash_dir(upper_fs: &Path) -> PathBuf {
    state_dir(upper_fs).join(TRASH)
}

/// The boot-attempt counter.
pub fn bootcount_path(upper_fs: &Path) -> PathBuf {
    state_dir(upper_fs).join(BOOTCOUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_agree() {
        for (s, c) in [
            (UPPER, UPPER_C),
            (WORK, WORK_C),
            (STATE_DIR, STATE_DIR_C),
            (RESET_REQUEST, RESET_REQUEST_C),
            (TRASH, TRASH_C),
            (BOOTCOUNT, BOOTCOUNT_C),
            (LAST_UPGRADE, LAST_UPGRADE_C),
        ] {
            assert_eq!(c.to_str().unwrap(), s);
        }
        assert_eq!(ROM, format!("/{ROM_NAME}"));
        assert_eq!(OVERLAY, format!("/{OVERLAY_NAME}"));
        assert_eq!(Path::new(STATE_FILE).parent(), Some(Path::new(RUN_DIR)));
        assert_eq!(
            LOWER_IDENTITY,
            crate::upgrade::identity::RECORD_NAME,
            "one name for the identity record"
        );
    }

    #[test]
    fn paths_on_the_upper() {
        let fs = Path::new(OVERLAY);
        assert_eq!(upperdir(fs), Path::new("/overlay/upper"));
        assert_eq!(workdir(fs), Path::new("/overlay/work"));
        assert_eq!(trash_dir(fs), Path::new("/overlay/.overlay-init/trash"));
        assert_eq!(
            bootcount_path(fs),
            Path::new("/overlay/.overlay-init/bootcount")
        );
    }
}
