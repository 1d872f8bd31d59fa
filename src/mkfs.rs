//! First-boot format planning (pure): which mkfs to run, where it lives (the
//! initramfs or the read-only lower), and with which arguments. Running it,
//! with the marker protocol of [`crate::probe::blank`], is `sys::mkfs`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::fstype::FsType;
use crate::probe::blank::{fs_size_for, BlankKind, Classification};
use crate::upperparams::FormatPolicy;

/// Where a mkfs for `fstype` may be, in the order they are tried (in the
/// initramfs first, then in the lower).
pub fn mkfs_candidates(fstype: FsType) -> &'static [&'static str] {
    match fstype {
        FsType::Ext4 => &[
            "/sbin/mkfs.ext4",
            "/usr/sbin/mkfs.ext4",
            "/bin/mkfs.ext4",
            "/usr/bin/mkfs.ext4",
            "/sbin/mke2fs",
            "/usr/sbin/mke2fs",
            "/bin/mke2fs",
            "/usr/bin/mke2fs",
        ],
        FsType::F2fs => &[
            "/sbin/mkfs.f2fs",
            "/usr/sbin/mkfs.f2fs",
            "/bin/mkfs.f2fs",
            "/usr/bin/mkfs.f2fs",
        ],
        FsType::Squashfs | FsType::Erofs => &[],
    }
}

/// A mkfs found: `program` is its path as seen from `root` (`None`: our own
/// root, the initramfs or the router's `/`; `Some(lower)`: run it chrooted into
/// the lower, with `/dev` and `/proc` bound in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsTool {
    pub program: PathBuf,
    pub root: Option<PathBuf>,
}

impl fmt::Display for MkfsTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            None => write!(f, "{}", self.program.display()),
            Some(root) => write!(
                f,
                "{} (the lower's, chrooted into {})",
                self.program.display(),
                root.display()
            ),
        }
    }
}

/// Whether a candidate whose symlinks resolve to `resolved` is a multi-call
/// binary's applet (busybox's `mke2fs` makes ext2 only and takes none of the
/// options [`plan_format`] passes): such a program is not a usable mkfs.
pub fn is_multicall_applet(resolved: &Path) -> bool {
    resolved
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| matches!(n, "busybox" | "toybox" | "busybox.static"))
}

/// The first mkfs for `fstype` that `is_executable` accepts: in our root, then
/// in `lower_root`. The error lists every place looked at.
pub fn find_mkfs(
    fstype: FsType,
    lower_root: Option<&Path>,
    is_executable: impl Fn(&Path) -> bool,
) -> Result<MkfsTool, String> {
    let candidates = mkfs_candidates(fstype);
    if candidates.is_empty() {
        return Err(format!(
            "{fstype} is read-only: there is no mkfs for an upper"
        ));
    }
    for program in candidates {
        if is_executable(Path::new(program)) {
            return Ok(MkfsTool {
                program: PathBuf::from(program),
                root: None,
            });
        }
    }
    if let Some(root) = lower_root {
        for program in candidates {
            if is_executable(&root.join(program.trim_start_matches('/'))) {
                return Ok(MkfsTool {
                    program: PathBuf::from(program),
                    root: Some(root.to_path_buf()),
                });
            }
        }
    }
    let mut places = "in the initramfs".to_string();
    if let Some(root) = lower_root {
        places.push_str(&format!(" nor in the lower ({})", root.display()));
    }
    Err(format!(
        "no mkfs for {fstype} {places}: looked for {} (add one with initramfs/build --binary {})",
        candidates.join(", "),
        candidates[0]
    ))
}

/// What the boot does with a persistent upper device, from its classification
/// and `ovl.format=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatDecision {
    /// Mount it: it holds a filesystem that can be an upper.
    Use,
    /// Format it (blank, or our own format cut short), then mount it.
    Format,
    /// Leave it as it is and boot on tmpfs; the reason is for the warning.
    Refuse(String),
}

pub fn decide(classification: &Classification, policy: FormatPolicy) -> FormatDecision {
    match (classification, policy) {
        (Classification::Usable(_), _) => FormatDecision::Use,
        (Classification::Blank(_) | Classification::Interrupted(_), FormatPolicy::Blank) => {
            FormatDecision::Format
        }
        (Classification::Blank(kind), FormatPolicy::Never) => FormatDecision::Refuse(format!(
            "it is blank ({}) and ovl.format=never",
            match kind {
                BlankKind::Zeroed => "zeroed",
                BlankKind::Erased => "erased",
                BlankKind::DeadC0de => "deadc0de",
            }
        )),
        (Classification::Interrupted(marker), FormatPolicy::Never) => {
            FormatDecision::Refuse(format!(
                "a {} format of it was cut short, and ovl.format=never",
                marker.fstype
            ))
        }
        (Classification::Foreign(what), _) => {
            FormatDecision::Refuse(format!("it holds {what}, not an upper"))
        }
    }
}

/// The smallest device each filesystem is formatted on (with the reserved tail):
/// mke2fs makes no journal under 4 MiB; mkfs.f2fs (1.15) fails under about 52 MiB.
pub fn min_device_size(fstype: FsType) -> u64 {
    match fstype {
        FsType::F2fs => 52 << 20,
        _ => 8 << 20,
    }
}

/// One mkfs run, fully decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatPlan {
    pub tool: MkfsTool,
    /// Arguments after the program name.
    pub args: Vec<String>,
    pub device: PathBuf,
    pub fstype: FsType,
    pub label: String,
    pub device_size: u64,
    /// What mkfs is told to use: the device less the reserved tail that holds
    /// the format marker.
    pub fs_size: u64,
}

/// Arguments for a quick, non-interactive format of `device` (`device_size`
/// bytes, `sector_size`-byte logical sectors) as `fstype` labelled `label`.
///
/// - ext4: `-F` (no "proceed anyway?" question), `-q`, `-t ext4` (also right
///   when the program is `mke2fs`), no discard (erased flash and fresh disks read
///   as zeroes already; a discard of a big device takes seconds), lazy inode
///   table and journal init (the kernel zeroes inode tables in the background;
///   a device we format has no stale journal to replay), size in KiB.
/// - f2fs: `-f`, `-q`, `-t 0` (no discard), size in logical sectors.
pub fn plan_format(
    tool: MkfsTool,
    fstype: FsType,
    label: &str,
    device: &Path,
    device_size: u64,
    sector_size: u32,
) -> Result<FormatPlan, String> {
    let min = min_device_size(fstype);
    if device_size < min {
        return Err(format!(
            "{} is {} KiB, too small for a {fstype} upper (at least {} MiB)",
            device.display(),
            device_size / 1024,
            min >> 20
        ));
    }
    if !(512..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(format!(
            "{}: sector size {sector_size} not supported",
            device.display()
        ));
    }
    crate::upperparams::label_fits(label, fstype)?;
    let fs_size =
        fs_size_for(device_size).ok_or_else(|| format!("{} too small", device.display()))?;
    let dev = device.display().to_string();
    let args: Vec<String> = match fstype {
        FsType::Ext4 => vec![
            "-t".into(),
            "ext4".into(),
            "-F".into(),
            "-q".into(),
            "-L".into(),
            label.into(),
            "-E".into(),
            "nodiscard,lazy_itable_init=1,lazy_journal_init=1".into(),
            dev,
            format!("{}k", fs_size / 1024),
        ],
        FsType::F2fs => vec![
            "-f".into(),
            "-q".into(),
            "-l".into(),
            label.into(),
            "-t".into(),
            "0".into(),
            dev,
            (fs_size / u64::from(sector_size)).to_string(),
        ],
        FsType::Squashfs | FsType::Erofs => {
            return Err(format!("{fstype} is read-only: it cannot be an upper"))
        }
    };
    Ok(FormatPlan {
        tool,
        args,
        device: device.to_path_buf(),
        fstype,
        label: label.to_string(),
        device_size,
        fs_size,
    })
}

/// "64 MiB", "1.5 GiB", "700 KiB": sizes as the format log line shows them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return if bytes.is_multiple_of(scale) {
                format!("{} {unit}", bytes / scale)
            } else {
                format!("{} {unit}", crate::decimal::in_unit(bytes, scale))
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found_at<'a>(paths: &'a [&'a str]) -> impl Fn(&Path) -> bool + 'a {
        move |p: &Path| paths.iter().any(|q| Path::new(q) == p)
    }

    #[test]
    fn busybox_applets_are_no_mkfs() {
        assert!(is_multicall_applet(Path::new("/rom/bin/busybox")));
        assert!(is_multicall_applet(Path::new("/bin/toybox")));
        assert!(!is_multicall_applet(Path::new("/usr/sbin/mke2fs")));
        assert!(!is_multicall_applet(Path::new("/sbin/mkfs.f2fs")));
    }

    #[test]
    fn the_initramfs_mkfs_wins_over_the_lower() {
        let tool = find_mkfs(
            FsType::Ext4,
            Some(Path::new("/rom")),
            found_at(&["/usr/sbin/mke2fs", "/rom/sbin/mkfs.ext4"]),
        )
        .unwrap();
        assert_eq!(
            tool,
            MkfsTool {
                program: "/usr/sbin/mke2fs".into(),
                root: None
            }
        );
    }

    #[test]
    fn the_lower_mkfs_runs_chrooted() {
        let tool = find_mkfs(
            FsType::F2fs,
            Some(Path::new("/rom")),
            found_at(&["/rom/usr/sbin/mkfs.f2fs", "/sbin/mkfs.ext4"]),
        )
        .unwrap();
        assert_eq!(tool.program, Path::new("/usr/sbin/mkfs.f2fs"));
        assert_eq!(tool.root.as_deref(), Some(Path::new("/rom")));
        assert!(tool.to_string().contains("chrooted into /rom"));
    }

    #[test]
    fn no_mkfs_anywhere_is_a_clear_error() {
        let e = find_mkfs(
            FsType::F2fs,
            Some(Path::new("/rom")),
            found_at(&["/sbin/mkfs.ext4"]),
        )
        .unwrap_err();
        assert!(
            e.starts_with("no mkfs for f2fs in the initramfs nor in the lower (/rom)"),
            "{e}"
        );
        assert!(
            e.contains("/usr/sbin/mkfs.f2fs") && e.contains("--binary /sbin/mkfs.f2fs"),
            "{e}"
        );
        let e = find_mkfs(FsType::Ext4, None, found_at(&[])).unwrap_err();
        assert!(e.starts_with("no mkfs for ext4 in the initramfs:"), "{e}");
        assert!(find_mkfs(FsType::Squashfs, None, found_at(&[])).is_err());
    }

    fn tool() -> MkfsTool {
        MkfsTool {
            program: "/sbin/mkfs.ext4".into(),
            root: None,
        }
    }

    #[test]
    fn ext4_arguments() {
        let plan = plan_format(
            tool(),
            FsType::Ext4,
            "overlay",
            Path::new("/dev/vdb"),
            64 << 20,
            512,
        )
        .unwrap();
        assert_eq!(
            plan.args,
            [
                "-t",
                "ext4",
                "-F",
                "-q",
                "-L",
                "overlay",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                "/dev/vdb",
                "65472k"
            ]
        );
        assert_eq!(plan.fs_size, (64 << 20) - 65536);
    }

    #[test]
    fn f2fs_arguments_count_logical_sectors() {
        let tool = MkfsTool {
            program: "/usr/sbin/mkfs.f2fs".into(),
            root: Some("/rom".into()),
        };
        let plan = plan_format(
            tool.clone(),
            FsType::F2fs,
            "data",
            Path::new("/dev/mmcblk0p3"),
            64 << 20,
            512,
        )
        .unwrap();
        assert_eq!(
            plan.args,
            [
                "-f",
                "-q",
                "-l",
                "data",
                "-t",
                "0",
                "/dev/mmcblk0p3",
                "130944"
            ]
        );
        let plan4k = plan_format(
            tool,
            FsType::F2fs,
            "data",
            Path::new("/dev/sda3"),
            64 << 20,
            4096,
        )
        .unwrap();
        assert_eq!(plan4k.args.last().unwrap(), "16368");
    }

    #[test]
    fn plans_refuse_what_cannot_work() {
        let dev = Path::new("/dev/vdb");
        let e = plan_format(tool(), FsType::F2fs, "overlay", dev, 32 << 20, 512).unwrap_err();
        assert!(
            e.contains("/dev/vdb is 32768 KiB, too small for a f2fs upper (at least 52 MiB)"),
            "{e}"
        );
        assert!(plan_format(tool(), FsType::Ext4, "overlay", dev, 4 << 20, 512).is_err());
        let e = plan_format(
            tool(),
            FsType::Ext4,
            "a-label-of-20-bytes",
            dev,
            64 << 20,
            512,
        )
        .unwrap_err();
        assert!(e.contains("ovl.upperlabel") && e.contains("16"), "{e}");
        assert!(plan_format(tool(), FsType::Ext4, "overlay", dev, 64 << 20, 1000).is_err());
        assert!(plan_format(tool(), FsType::Erofs, "overlay", dev, 64 << 20, 512).is_err());
    }

    #[test]
    fn decisions() {
        use crate::probe::blank::FormatMarker;
        let blank = Classification::Blank(BlankKind::Erased);
        assert_eq!(decide(&blank, FormatPolicy::Blank), FormatDecision::Format);
        assert_eq!(
            decide(&blank, FormatPolicy::Never),
            FormatDecision::Refuse("it is blank (erased) and ovl.format=never".into())
        );
        let cut = Classification::Interrupted(FormatMarker {
            device_size: 1 << 26,
            fs_size: 1 << 25,
            fstype: FsType::F2fs,
        });
        assert_eq!(decide(&cut, FormatPolicy::Blank), FormatDecision::Format);
        assert!(
            matches!(decide(&cut, FormatPolicy::Never), FormatDecision::Refuse(r) if r.contains("f2fs format"))
        );
        let vfat = Classification::Foreign("vfat".into());
        for policy in [FormatPolicy::Blank, FormatPolicy::Never] {
            assert_eq!(
                decide(&vfat, policy),
                FormatDecision::Refuse("it holds vfat, not an upper".into())
            );
        }
        let ext4 = Classification::Usable(crate::probe::superblock::FsInfo {
            kind: crate::probe::superblock::FsKind::Supported(FsType::Ext4),
            label: None,
            uuid: None,
        });
        assert_eq!(decide(&ext4, FormatPolicy::Never), FormatDecision::Use);
    }

    #[test]
    fn sizes_for_the_log() {
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(700 * 1024), "700 KiB");
        assert_eq!(human_size(12), "12 B");
    }
}
