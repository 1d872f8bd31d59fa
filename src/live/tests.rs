use super::*;
use crate::devices::{not_found_message, BlockDevice, DeviceSet};
use crate::probe::superblock::{detect, FsInfo};
use std::time::Duration;

const ALL_KINDS: &[FsKind] = &[
    FsKind::Supported(FsType::Squashfs),
    FsKind::Supported(FsType::Erofs),
    FsKind::Supported(FsType::Ext4),
    FsKind::Other("iso9660"),
    FsKind::Other("vfat"),
    FsKind::Other("exfat"),
    FsKind::Other("btrfs"),
    FsKind::Other("xfs"),
    FsKind::Supported(FsType::F2fs),
    FsKind::Other("swap"),
    FsKind::Other("jffs2"),
    FsKind::Other("jbd"),
];

#[test]
fn live_media_filesystems_host_images_read_only() {
    let iso = image_host("/dev/sr0", &FsKind::Other("iso9660")).unwrap();
    assert_eq!(
        (iso.fstype, iso.options, iso.writable),
        ("iso9660", "", false)
    );
    assert_eq!(iso.modules, ["isofs"]);
    let fat = image_host("/dev/sda1", &FsKind::Other("vfat")).unwrap();
    assert_eq!(fat.fstype, "vfat");
    assert_eq!(fat.options, "codepage=437,iocharset=ascii,utf8");
    // Every character set the options name has its module listed.
    assert_eq!(fat.modules, ["vfat", "nls_cp437", "nls_ascii"]);
    assert!(fat.writable);
    let exfat = image_host("/dev/sda1", &FsKind::Other("exfat")).unwrap();
    assert_eq!((exfat.fstype, exfat.options), ("exfat", "iocharset=utf8"));
    let ext4 = image_host("/dev/vda", &FsKind::Supported(FsType::Ext4)).unwrap();
    assert_eq!(
        (ext4.fstype, ext4.options, ext4.writable),
        ("ext4", "", true)
    );
    assert!(
        !image_host("/dev/vda", &FsKind::Supported(FsType::Squashfs))
            .unwrap()
            .writable
    );
}

#[test]
fn every_listed_host_is_accepted_and_nothing_else() {
    let listed: Vec<&str> = IMAGE_HOSTS.split(", ").collect();
    for kind in ALL_KINDS {
        let accepted = image_host("/dev/vda", kind);
        assert_eq!(accepted.is_ok(), listed.contains(&kind.name()), "{kind}");
        if let Ok(mount) = accepted {
            assert_eq!(mount.fstype, kind.name());
        }
    }
    let err = image_host("/dev/vdb", &FsKind::Other("swap")).unwrap_err();
    assert_eq!(
        err,
        format!("/dev/vdb holds swap, which cannot hold an image file (accepted: {IMAGE_HOSTS})")
    );
}

#[test]
fn a_root_device_holding_an_iso_says_how_to_boot_the_image_on_it() {
    let msg = not_a_lower("/dev/vda", &FsKind::Other("iso9660"));
    assert!(
        msg.starts_with("/dev/vda holds iso9660, which overlay-init cannot mount"),
        "{msg}"
    );
    assert!(msg.contains("ovl.image=PATH"), "{msg}");
    let swap = not_a_lower("/dev/vda", &FsKind::Other("swap"));
    assert!(!swap.contains("ovl.image"), "{swap}");
}

#[test]
fn upper_values() {
    assert_eq!(parse_upper("tmpfs"), Ok(UpperTarget::Tmpfs));
    assert_eq!(
        parse_upper("LABEL=persist"),
        Ok(UpperTarget::Device(DeviceSpec::Label("persist".into())))
    );
    assert_eq!(
        parse_upper("/dev/vdb"),
        Ok(UpperTarget::Device(DeviceSpec::Path("/dev/vdb".into())))
    );
    assert_eq!(
        parse_upper("/live/persist.img"),
        Ok(UpperTarget::File("/live/persist.img".into()))
    );
    for bad in [
        "/live/",
        "/live//persist.img",
        "/live/../persist.img",
        "/./p.img",
    ] {
        let err = parse_upper(bad).unwrap_err();
        assert_eq!(err.param, "ovl.upper");
        assert!(err.message.starts_with(bad), "{err}");
    }
    let err = parse_upper("persist.img").unwrap_err();
    assert_eq!(err.param, "ovl.upper");
    assert!(
        err.message.contains("absolute path of an image file"),
        "{err}"
    );
    assert!(err.to_string().starts_with("ovl.upper: "), "{err}");
}

#[test]
fn upper_create_sizes() {
    assert_eq!(parse_upper_create("64M"), Ok(64 << 20));
    assert_eq!(parse_upper_create("2G"), Ok(2 << 30));
    assert_eq!(parse_upper_create("1T"), Ok(1 << 40));
    assert_eq!(parse_upper_create("16384k"), Ok(16 << 20));
    assert_eq!(parse_upper_create("16777216"), Ok(16 << 20));
    for bad in [
        "",
        "M",
        "15M",
        "-1G",
        "1.5G",
        "64MB",
        "99999999999999999999",
        "16777216T",
    ] {
        let err = parse_upper_create(bad).unwrap_err();
        assert_eq!(err.param, "ovl.upper_create", "{bad}");
        assert!(
            err.message.contains("accepted: a size of at least 16M"),
            "{err}"
        );
    }
}

#[test]
fn toram_is_a_flag() {
    assert_eq!(parse_toram(None), Ok(true));
    assert_eq!(parse_toram(Some("yes")), Ok(true));
    assert_eq!(parse_toram(Some("0")), Ok(false));
    let err = parse_toram(Some("fast")).unwrap_err();
    assert_eq!(err.param, "ovl.toram");
    assert!(err.message.starts_with("fast is not a flag value"), "{err}");
}

#[test]
fn toram_needs_the_image_plus_headroom() {
    let mib = 1u64 << 20;
    assert_eq!(toram_fits(100 * mib, 228 * mib), Ok(()));
    let err = toram_fits(100 * mib, 228 * mib - 1).unwrap_err();
    assert_eq!(
        err,
        "ovl.toram: the image is 100.0 MiB but only 228.0 MiB of RAM is available; the copy \
         needs 228.0 MiB (the image plus 128.0 MiB for the system); booting from the medium instead"
    );
    assert!(toram_fits(u64::MAX, u64::MAX).is_err());
}

#[test]
fn toram_progress_lines() {
    let mib = 1u64 << 20;
    assert_eq!(
        toram_progress(120 * mib, 700 * mib, Duration::from_secs(3)),
        "toram: 120.0 MiB of 700.0 MiB (17%), 40.0 MiB/s"
    );
    assert_eq!(
        toram_progress(0, 0, Duration::ZERO),
        "toram: 0 B of 0 B (100%)"
    );
}

// ---- messages carry names, not Rust Debug output ---------------------------

/// What in `msg` looks like Rust `Debug` output rather than words: enum
/// variants, `Some(`/`None`, escaped quotes, and quoted text other than the
/// user-given values in `quoted_ok` (a label, a path the user typed).
fn debug_leftovers(msg: &str, quoted_ok: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for marker in [
        "Other(",
        "Supported(",
        "Some(",
        "Ok(",
        "Err(",
        "FsKind",
        "FsType",
        "\\\"",
        "\\u{",
        "[\"",
        "{ ",
        "Squashfs",
        "Erofs",
        "Ext4",
        "Iso9660",
    ] {
        if msg.contains(marker) {
            found.push(format!("{marker:?}"));
        }
    }
    if msg
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == "None")
    {
        found.push("None".into());
    }
    let mut parts = msg.split('"');
    parts.next();
    while let Some(quoted) = parts.next() {
        if !quoted_ok.contains(&quoted) {
            found.push(format!("quoted {quoted:?}"));
        }
        parts.next();
    }
    if !msg.matches('"').count().is_multiple_of(2) {
        found.push("an unpaired quote".into());
    }
    found
}

#[test]
fn the_leftover_check_catches_debug_output() {
    let kind = FsKind::Other("iso9660");
    assert!(!debug_leftovers(&format!("{kind:?}"), &[]).is_empty());
    assert!(!debug_leftovers(&format!("{:?}", Some("x")), &[]).is_empty());
    assert!(!debug_leftovers(&format!("{:?}", FsType::Ext4), &[]).is_empty());
    assert!(!debug_leftovers("label was None", &[]).is_empty());
    assert!(!debug_leftovers("LABEL=\"MYLIVE\"", &[]).is_empty());
    assert!(debug_leftovers("LABEL=\"MYLIVE\"", &["MYLIVE"]).is_empty());
    assert!(debug_leftovers(&format!("holds {kind}"), &[]).is_empty());
}

fn device(name: &str, fs: Option<FsInfo>, probe_error: Option<String>) -> BlockDevice {
    BlockDevice {
        name: name.into(),
        major: 11,
        minor: 0,
        size_bytes: 3 << 20,
        partition: None,
        filesystem: fs,
        probe_error,
    }
}

/// Every message on the live-media paths that can be built without a kernel:
/// host and lower refusals for every kind the probe knows, the device listing
/// for every live fixture, the probe's errors on damaged copies, the value
/// parsers' errors, and the toram lines.
#[test]
fn no_message_carries_debug_output() {
    let mut messages: Vec<(String, Vec<&str>)> = Vec::new();
    for kind in ALL_KINDS {
        messages.push((kind.to_string(), vec![]));
        messages.push((not_a_lower("/dev/sr0", kind), vec![]));
        if let Err(e) = image_host("/dev/sr0", kind) {
            messages.push((e, vec![]));
        }
    }
    let fixtures: &[(&[u8], &str)] = &[
        (
            include_bytes!("../../tests/fixtures/probe/iso9660.img"),
            "MYLIVE",
        ),
        (
            include_bytes!("../../tests/fixtures/probe/iso9660-joliet.img"),
            "My Live Disc",
        ),
        (
            include_bytes!("../../tests/fixtures/probe/vfat12.img"),
            "LIVEUSB",
        ),
        (
            include_bytes!("../../tests/fixtures/probe/vfat-nolabel.img"),
            "",
        ),
        (
            include_bytes!("../../tests/fixtures/probe/exfat.img"),
            "LiveExfat",
        ),
    ];
    let mut seen = Vec::new();
    for (n, (image, label)) in fixtures.iter().enumerate() {
        let name = format!("sr{n}");
        let fs = detect(image).unwrap().unwrap();
        seen.push(device(&name, Some(fs), None));
        // Damaged copies: the probe's own reasons.
        for cut in [2048, 32775, 34000, 36000] {
            if let Err(e) = detect(&image[..cut.min(image.len())]) {
                messages.push((format!("{}", e), vec![]));
                seen.push(device(
                    &format!("{name}c{cut}"),
                    None,
                    Some(format!("superblock: {e}")),
                ));
            }
        }
        let _ = label;
    }
    seen.push(device("vdz", None, None));
    let mut set = DeviceSet::new();
    for dev in &seen {
        messages.push((dev.to_string(), fixtures.iter().map(|f| f.1).collect()));
        set.upsert(dev.clone());
    }
    let spec = DeviceSpec::Label("NOPE".into());
    messages.push((
        not_found_message(&[&spec], &seen, Duration::from_secs(30)),
        fixtures.iter().map(|f| f.1).collect(),
    ));
    // The device-spec parser quotes what the user typed: that is a value, not Debug output.
    for bad in ["persist.img", "/a//b", "LABEL=", "UUID=xyz"] {
        messages.push((parse_upper(bad).unwrap_err().to_string(), vec![bad]));
    }
    for bad in ["", "1.5G", "1M", "99999999999999999999T"] {
        messages.push((parse_upper_create(bad).unwrap_err().to_string(), vec![]));
    }
    messages.push((parse_toram(Some("maybe")).unwrap_err().to_string(), vec![]));
    messages.push((toram_fits(1 << 30, 1 << 29).unwrap_err(), vec![]));
    messages.push((toram_progress(1, 3, Duration::from_millis(10)), vec![]));
    // The command line's own verdict on a live-media rootfstype.
    for problem in crate::cmdline::parse("root=LABEL=MYLIVE rootfstype=iso9660").problems {
        messages.push((problem.to_string(), vec!["iso9660"]));
    }
    assert!(messages.len() > 40, "{} messages", messages.len());
    for (msg, quoted_ok) in &messages {
        let leftovers = debug_leftovers(msg, quoted_ok);
        assert!(leftovers.is_empty(), "{msg}\n  has {leftovers:?}");
    }
}

#[test]
fn toram_tmpfs_is_the_image_in_whole_mib_plus_one() {
    assert_eq!(toram_tmpfs_size(0), 1 << 20);
    assert_eq!(toram_tmpfs_size(1), 2 << 20);
    assert_eq!(toram_tmpfs_size(5 << 20), 6 << 20);
}

#[test]
fn mem_available_is_read_from_meminfo() {
    let meminfo =
        "MemTotal:         234567 kB\nMemFree:          100000 kB\nMemAvailable:     200000 kB\n";
    assert_eq!(mem_available(meminfo), Some(200_000 * 1024));
    assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    assert_eq!(mem_available("MemAvailable: lots\n"), None);
}

#[test]
fn mkfs_arguments_label_the_file() {
    assert_eq!(
        mkfs_args("/x/persist.img"),
        ["-F", "-L", "persistence", "/x/persist.img"]
    );
}
