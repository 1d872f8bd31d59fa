//! Live media, the pure side: which filesystems may hold the image file of
//! `ovl.image=` (an ISO, a FAT or exFAT stick, ext4, ...) and how each is
//! mounted read-only; the values of `ovl.upper=PATH` (persistence in a file),
//! `ovl.upper_create=SIZE` and `ovl.toram`; and the wording of the RAM check
//! and progress of `ovl.toram`. No I/O here: the boot sequence mounts.

use std::fmt;

use crate::devspec::DeviceSpec;
use crate::fstype::FsType;
use crate::probe::superblock::FsKind;

/// How to mount a filesystem that holds image files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMount {
    /// The type mount(2) takes (`iso9660`, `vfat`, ...).
    pub fstype: &'static str,
    /// The data string for mount(2) (the read-only flag is the caller's, MS_RDONLY).
    pub options: &'static str,
    /// Kernel modules the mount needs, in load order (the filesystem and the
    /// character sets its options name). Built-in ones are simply not found.
    pub modules: &'static [&'static str],
    /// Whether the filesystem can be mounted read-write at all (for a
    /// persistence file on it); an ISO never can.
    pub writable: bool,
}

const ISO9660: HostMount = HostMount {
    fstype: "iso9660",
    // Rock Ridge and Joliet names are used without options; Joliet names come
    // out in UTF-8 through the kernel's default NLS, no module needed.
    options: "",
    modules: &["isofs"],
    writable: false,
};

const VFAT: HostMount = HostMount {
    fstype: "vfat",
    // Spelled out rather than left to the kernel's CONFIG_FAT_DEFAULT_*, which
    // differ between distributions, so that the modules below are the ones
    // needed: the 8.3 names' codepage and the (ASCII) I/O charset; long names
    // come out in UTF-8.
    options: "codepage=437,iocharset=ascii,utf8",
    modules: &["vfat", "nls_cp437", "nls_ascii"],
    writable: true,
};

const EXFAT: HostMount = HostMount {
    fstype: "exfat",
    // exfat converts UTF-8 itself: no NLS module.
    options: "iocharset=utf8",
    modules: &["exfat"],
    writable: true,
};

const fn plain(fstype: &'static str, modules: &'static [&'static str]) -> HostMount {
    HostMount {
        fstype,
        options: "",
        modules,
        writable: true,
    }
}

/// The filesystems an image file may live on, as the message lists them.
pub const IMAGE_HOSTS: &str = "iso9660, vfat, exfat, ext4, squashfs, erofs, btrfs, xfs, f2fs";

/// How to mount the filesystem `kind` on `dev` as the host of an image file
/// (`ovl.image=`, the image files of `ovl.lower=`, a persistence file).
/// The error names the device, what it holds and what is accepted.
pub fn image_host(dev: &str, kind: &FsKind) -> Result<HostMount, String> {
    let mount = match kind {
        FsKind::Supported(FsType::Ext4) => plain("ext4", &["ext4"]),
        FsKind::Supported(FsType::Squashfs) => HostMount {
            writable: false,
            ..plain("squashfs", &["squashfs"])
        },
        FsKind::Supported(FsType::Erofs) => HostMount {
            writable: false,
            ..plain("erofs", &["erofs"])
        },
        FsKind::Other("iso9660") => ISO9660,
        FsKind::Other("vfat") => VFAT,
        FsKind::Other("exfat") => EXFAT,
        FsKind::Other("btrfs") => plain("btrfs", &["btrfs"]),
        FsKind::Other("xfs") => plain("xfs", &["xfs"]),
        FsKind::Supported(FsType::F2fs) => plain("f2fs", &["f2fs"]),
        FsKind::Other(other) => {
            return Err(format!(
                "{dev} holds {other}, which cannot hold an image file (accepted: {IMAGE_HOSTS})"
            ))
        }
    };
    Ok(mount)
}

/// The message for a `root=` device that holds a filesystem overlay-init
/// cannot mount as the root image; for a filesystem that can hold one, it says
/// how to boot the image file on it.
pub fn not_a_lower(dev: &str, kind: &FsKind) -> String {
    let base = format!(
        "{dev} holds {kind}, which overlay-init cannot mount as the root image (accepted: squashfs, erofs, ext4)"
    );
    match image_host(dev, kind) {
        Ok(_) => format!(
            "{base}; if the image is a file on it, name the file with ovl.image=PATH (e.g. ovl.image=/live/root.sqsh)"
        ),
        Err(_) => base,
    }
}

/// A `ovl.*` value that cannot be used; `message` says what is accepted and
/// fits `cmdline::Problem::message` (the table adds the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

impl std::error::Error for ParamError {}

fn param_error(param: &'static str, message: String) -> ParamError {
    ParamError { param, message }
}

/// Where the upper lives, as `ovl.upper=` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperTarget {
    Tmpfs,
    Device(DeviceSpec),
    /// An absolute path outside /dev: an image file (ext4 or f2fs) on the
    /// `root=` filesystem, loop-mounted as a persistent upper.
    File(String),
}

/// Parse an `ovl.upper=` value: `tmpfs`, a device spec, or an absolute path to
/// an image file on the `root=` filesystem.
pub fn parse_upper(value: &str) -> Result<UpperTarget, ParamError> {
    const PARAM: &str = "ovl.upper";
    if value == "tmpfs" {
        return Ok(UpperTarget::Tmpfs);
    }
    if value.starts_with('/') && !value.starts_with("/dev/") {
        return check_image_path(value)
            .map(|()| UpperTarget::File(value.to_string()))
            .map_err(|why| param_error(PARAM, format!("{value}: {why}")));
    }
    DeviceSpec::parse(value)
        .map(UpperTarget::Device)
        .map_err(|e| {
            param_error(
                PARAM,
                format!(
                    "{e}, tmpfs, or the absolute path of an image file on the root= filesystem"
                ),
            )
        })
}

/// An image file's path on its host: absolute, normalised, naming a file.
fn check_image_path(path: &str) -> Result<(), &'static str> {
    if path.ends_with('/') {
        return Err("an image file path cannot end in /");
    }
    if path.contains('\0') {
        return Err("a path cannot hold a NUL byte");
    }
    if path
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("expected a plain absolute path (no //, . or .. components)");
    }
    Ok(())
}

/// The smallest persistence file `ovl.upper_create=` makes: room for an ext4
/// journal and a few files.
pub const MIN_UPPER_FILE: u64 = 16 << 20;

/// Parse `ovl.upper_create=SIZE`: the size of the sparse persistence file made
/// (and formatted) when `ovl.upper=PATH` names a missing file. `64M`, `2G`,
/// `1T`, `524288k` or a number of bytes; at least 16M.
pub fn parse_upper_create(value: &str) -> Result<u64, ParamError> {
    const PARAM: &str = "ovl.upper_create";
    let accepted = "accepted: a size of at least 16M: bytes, or a number with k, M, G or T";
    let err = |what: String| param_error(PARAM, format!("{what}; {accepted}"));
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 20),
        Some(b'g' | b'G') => (&value[..value.len() - 1], 30),
        Some(b't' | b'T') => (&value[..value.len() - 1], 40),
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("{value} is not a size")));
    }
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| err(format!("{value} is too large")))?;
    if bytes < MIN_UPPER_FILE {
        return Err(err(format!("{value} is too small for a persistence file")));
    }
    Ok(bytes)
}

/// Parse `ovl.toram`: a flag (no value, 1/0, yes/no, true/false, on/off).
pub fn parse_toram(value: Option<&str>) -> Result<bool, ParamError> {
    match value {
        None | Some("1" | "y" | "yes" | "true" | "on") => Ok(true),
        Some("0" | "n" | "no" | "false" | "off") => Ok(false),
        Some(v) => Err(param_error(
            "ovl.toram",
            format!("{v} is not a flag value; accepted: no value, 1/0, yes/no, true/false, on/off"),
        )),
    }
}

/// RAM `ovl.toram` leaves free after the copy, for the system itself.
pub const TORAM_HEADROOM: u64 = 128 << 20;

/// Whether an image of `image_bytes` may be copied to RAM with `available`
/// bytes free (MemAvailable); the error says how much is missing.
pub fn toram_fits(image_bytes: u64, available: u64) -> Result<(), String> {
    let needed = image_bytes.checked_add(TORAM_HEADROOM);
    if needed.is_some_and(|needed| needed <= available) {
        return Ok(());
    }
    let needed = needed.unwrap_or(u64::MAX);
    Err(format!(
        "ovl.toram: the image is {} but only {} of RAM is available; the copy needs {} \
         (the image plus {} for the system); booting from the medium instead",
        crate::devices::human_size(image_bytes),
        crate::devices::human_size(available),
        crate::devices::human_size(needed),
        crate::devices::human_size(TORAM_HEADROOM)
    ))
}

/// One progress line of the copy to RAM, e.g.
/// `toram: 120.0 MiB of 700.0 MiB (17%), 40.0 MiB/s`.
pub fn toram_progress(copied: u64, total: u64, elapsed: std::time::Duration) -> String {
    // u64 (no u128 formatting in the binary): an image under 184 PB cannot overflow.
    let percent = copied
        .saturating_mul(100)
        .checked_div(total)
        .unwrap_or(100)
        .min(100);
    // Microseconds (saturating): the rate is exact to well under 1% for any
    // image under 18 TB copied in more than a millisecond.
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let rate = match copied.saturating_mul(1_000_000).checked_div(micros) {
        Some(per_sec) => format!(", {}/s", crate::devices::human_size(per_sec)),
        None => String::new(),
    };
    format!(
        "toram: {} of {} ({percent}%){rate}",
        crate::devices::human_size(copied),
        crate::devices::human_size(total)
    )
}

/// How often `ovl.toram` prints a progress line.
pub const TORAM_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The `size=` of the tmpfs `ovl.toram` copies an image of `image_bytes`
/// into: the image rounded up to whole MiB, plus one MiB for the directories.
pub fn toram_tmpfs_size(image_bytes: u64) -> u64 {
    image_bytes.div_ceil(1 << 20).saturating_add(1) << 20
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

/// Where `ovl.upper_create=` looks for the formatter, in the initramfs.
pub const MKFS_EXT4_PATHS: &[&str] = &[
    "/sbin/mkfs.ext4",
    "/usr/sbin/mkfs.ext4",
    "/bin/mkfs.ext4",
    "/usr/bin/mkfs.ext4",
];

/// The label a persistence file made by `ovl.upper_create=` carries.
pub const PERSISTENCE_LABEL: &str = "persistence";

/// The formatter's arguments for a new persistence file at `file`: ext4
/// (what `mkfs.ext4` makes), forced since the target is a regular file.
pub fn mkfs_args(file: &str) -> Vec<&str> {
    vec!["-F", "-L", PERSISTENCE_LABEL, file]
}

#[cfg(test)]
mod tests;
