//! The live-media readers (iso9660, vfat, exfat) against what `blkid -p -o export`
//! prints for the same images (tests/fixtures/probe/NAME.blkid, written by
//! tests/fixtures/make-probe-fixtures from xorriso, mkfs.vfat and mkfs.exfat output).

use super::source::SliceSource;
use super::superblock::{detect, detect_with, FsInfo, FsKind, PROBE_BYTES};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../tests/fixtures/probe/", $name, ".img")).as_slice(),
            include_str!(concat!("../../tests/fixtures/probe/", $name, ".blkid")),
        )
    };
}

const LIVE: &[(&str, &[u8], &str)] = &[
    fixture!("iso9660"),
    fixture!("iso9660-joliet"),
    fixture!("iso9660-long"),
    fixture!("iso9660-differs"),
    fixture!("vfat12"),
    fixture!("vfat16"),
    fixture!("vfat32"),
    fixture!("vfat-nolabel"),
    fixture!("vfat-renamed"),
    fixture!("exfat"),
    fixture!("exfat-utf16"),
];

fn bytes_of(name: &str) -> &'static [u8] {
    LIVE.iter().find(|(n, _, _)| *n == name).expect("fixture").1
}

/// Undo blkid's `-o export` escaping: `\X` is X, `M-` sets the high bit, `^X` is a
/// control character (`^?` DEL).
fn unescape_export(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let mut high = 0u8;
        if bytes[i..].starts_with(b"M-") {
            high = 0x80;
            i += 2;
        }
        let c = match bytes.get(i) {
            Some(b'^') => {
                i += 1;
                bytes.get(i).copied().unwrap_or(0) ^ 0x40
            }
            Some(b'\\') => {
                i += 1;
                bytes.get(i).copied().unwrap_or(0)
            }
            Some(&c) => c,
            None => 0,
        };
        out.push(c | high);
        i += 1;
    }
    out
}

/// TYPE, LABEL and UUID from a `blkid -p -o export` listing.
fn blkid_view(export: &str) -> (String, Option<String>, Option<String>) {
    let mut fstype = String::new();
    let (mut label, mut uuid) = (None, None);
    for line in export.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = String::from_utf8(unescape_export(value)).expect("UTF-8 value");
        match key {
            "TYPE" => fstype = value,
            "LABEL" => label = Some(value),
            "UUID" => uuid = Some(value),
            _ => {}
        }
    }
    (fstype, label, uuid)
}

fn our_view(found: &FsInfo) -> (String, Option<String>, Option<String>) {
    (
        found.kind.to_string(),
        found.label.clone(),
        found.uuid.clone(),
    )
}

#[test]
fn export_unescaping() {
    assert_eq!(unescape_export(r"My\ Live"), b"My Live");
    assert_eq!(unescape_export(r"ClM-CM-)\ USB"), "Clé USB".as_bytes());
    assert_eq!(unescape_export(r"M-CM-^\n"), b"\xC3\x9Cn");
}

#[test]
fn every_live_fixture_reads_as_blkid_reads_it() {
    for (name, image, export) in LIVE {
        let found = detect(image)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: not recognised"));
        assert_eq!(our_view(&found), blkid_view(export), "{name}");
    }
}

#[test]
fn the_expected_values_are_the_tools_arguments() {
    // The same facts, spelled out, so a regenerated .blkid cannot drift unseen.
    let view = |name| our_view(&detect(bytes_of(name)).unwrap().unwrap());
    let s = |v: &str| Some(v.to_string());
    let date = s("2024-01-02-03-04-05-06");
    assert_eq!(
        view("iso9660"),
        ("iso9660".into(), s("MYLIVE"), date.clone())
    );
    assert_eq!(
        view("iso9660-joliet"),
        ("iso9660".into(), s("My Live Disc"), date.clone())
    );
    assert_eq!(
        view("iso9660-long"),
        (
            "iso9660".into(),
            s("A_Very_Long_Live_Label_2024"),
            date.clone()
        )
    );
    assert_eq!(view("iso9660-differs").1, s("My Live Disc"));
    assert_eq!(
        view("vfat12"),
        ("vfat".into(), s("LIVEUSB"), s("1234-ABCD"))
    );
    assert_eq!(view("vfat16"), ("vfat".into(), s("LIVE16"), s("0BAD-F00D")));
    assert_eq!(view("vfat32"), ("vfat".into(), s("LIVE32"), s("C0DE-C0DE")));
    // The boot sector's "NO NAME", or its stale copy, is not the label.
    assert_eq!(view("vfat-nolabel"), ("vfat".into(), None, s("DEAD-BEEF")));
    assert_eq!(view("vfat-renamed").1, s("RENAMED"));
    assert_eq!(
        view("exfat"),
        ("exfat".into(), s("LiveExfat"), s("1234-ABCD"))
    );
    assert_eq!(view("exfat-utf16").1, s("Clé USB"));
}

#[test]
fn the_fat32_label_past_the_first_bytes_is_read_from_the_device() {
    let image = bytes_of("vfat32");
    assert!(
        image.len() > PROBE_BYTES,
        "the root directory must lie past the head"
    );
    let head = &image[..PROBE_BYTES];
    // The head alone: a vfat without its label (the root directory is not in it).
    let head_only = detect(head).unwrap().unwrap();
    assert_eq!(head_only.label, None);
    // With the device behind it, the label is there.
    let full = detect_with(head, &mut SliceSource(image)).unwrap().unwrap();
    assert_eq!(full.label.as_deref(), Some("LIVE32"));
}

#[test]
fn readers_past_a_short_head_see_the_same() {
    // A device shorter reads only what it has, but the answer does not depend on
    // how much of it was in the first read.
    for (name, image, _) in LIVE {
        let full = detect(image).unwrap().unwrap();
        for head_len in [512, 4096, 34 * 1024, 36 * 1024] {
            let head = &image[..head_len.min(image.len())];
            if let Ok(Some(found)) = detect_with(head, &mut SliceSource(image)) {
                assert_eq!(found, full, "{name} with a {head_len}-byte head");
            }
        }
    }
}

#[test]
fn iso_uuid_is_the_modification_date_else_the_creation_date() {
    let mut iso = bytes_of("iso9660").to_vec();
    let pvd = 16 * 2048;
    iso[pvd + 813..pvd + 829].copy_from_slice(b"2020123123595999");
    assert_eq!(
        detect(&iso).unwrap().unwrap().uuid.as_deref(),
        Some("2024-01-02-03-04-05-06")
    );
    iso[pvd + 830..pvd + 846].copy_from_slice(b"0000000000000000");
    iso[pvd + 846] = 0;
    assert_eq!(
        detect(&iso).unwrap().unwrap().uuid.as_deref(),
        Some("2020-12-31-23-59-59-99")
    );
    iso[pvd + 813..pvd + 829].copy_from_slice(b"0000000000000000");
    iso[pvd + 829] = 0;
    assert_eq!(detect(&iso).unwrap().unwrap().uuid, None);
}

#[test]
fn an_iso_without_its_primary_descriptor_is_an_error() {
    let mut iso = bytes_of("iso9660").to_vec();
    iso[16 * 2048] = 2; // not Joliet (no escape sequences): ignored
    let err = detect(&iso).unwrap_err().to_string();
    assert!(err.contains("iso9660") && err.contains("primary"), "{err}");
}

#[test]
fn fat_boot_sector_checks_are_blkids() {
    let fat = bytes_of("vfat12");
    let patched = |offset: usize, value: u8| {
        let mut v = fat.to_vec();
        v[offset] = value;
        detect(&v).unwrap()
    };
    assert_eq!(patched(16, 0), None, "no FAT");
    assert_eq!(patched(21, 0x12), None, "bad media byte");
    assert_eq!(patched(13, 3), None, "cluster size not a power of two");
    assert_eq!(patched(12, 0x01), None, "sector size 256+...");
    // FAT12/16 without the extended boot signature: no serial.
    assert_eq!(patched(38, 0).map(|f| f.uuid), Some(None));
}

#[test]
fn exfat_sanity_checks() {
    let ex = bytes_of("exfat");
    let patched = |offset: usize, value: u8| {
        let mut v = ex.to_vec();
        v[offset] = value;
        detect(&v).unwrap()
    };
    assert_eq!(patched(20, 1), None, "MustBeZero region");
    assert_eq!(patched(1, 0x77), None, "jump instruction");
    assert_eq!(patched(108, 13), None, "sector size 8 KiB");
    assert_eq!(patched(510, 0), None, "boot signature");
    // No label entry: the serial still names it.
    let root = 28 * 1024;
    assert_eq!(ex[root], 0x83, "the label is the first root entry");
    let unlabeled = patched(root, 0x03).unwrap();
    assert_eq!(
        (unlabeled.label, unlabeled.uuid.as_deref()),
        (None, Some("1234-ABCD"))
    );
}

#[test]
fn every_prefix_is_an_error_none_or_the_same_filesystem() {
    for (name, image, _) in LIVE {
        let full = detect(image).unwrap().unwrap();
        for len in (0..=image.len()).step_by(97).chain([image.len()]) {
            if let Ok(Some(found)) = detect(&image[..len]) {
                assert_eq!(found.kind, full.kind, "{name}, {len} bytes");
                assert_eq!(found.uuid, full.uuid, "{name}, {len} bytes");
                // A root directory cut short hides the label; it never changes it.
                assert!(
                    found.label.is_none() || found.label == full.label,
                    "{name}, {len} bytes"
                );
            }
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = crate::test_rng::XorShift::new(0x1505_9660_FA7E_0042);
    for round in 0..3000 {
        let (_, image, _) = LIVE[round % LIVE.len()];
        let _ = detect(&rng.mutate(image, image.len() as u64));
    }
}

#[test]
fn kinds_display_as_their_names() {
    assert_eq!(FsKind::Other("iso9660").to_string(), "iso9660");
    assert_eq!(
        FsKind::Supported(crate::fstype::FsType::Squashfs).to_string(),
        "squashfs"
    );
}
