#![no_main]
//! `probe::superblock::detect` must never panic, and the answer must not depend
//! on how much of the device came in the first read (PROBE_BYTES) and how much
//! the readers fetched past it (FAT/exFAT root directories).

use libfuzzer_sys::fuzz_target;
use overlay_init::probe::source::SliceSource;
use overlay_init::probe::superblock::{detect, detect_with, PROBE_BYTES};

fuzz_target!(|data: &[u8]| {
    let result = detect(data);
    if data.len() > PROBE_BYTES {
        assert_eq!(
            result,
            detect_with(&data[..PROBE_BYTES], &mut SliceSource(data))
        );
    }
    if let Ok(Some(info)) = result {
        if let Some(uuid) = &info.uuid {
            match info.kind.name() {
                // The serial number, as blkid prints it.
                "vfat" | "exfat" => {
                    assert_eq!(uuid.len(), 9);
                    assert!(!uuid.chars().any(|c| c.is_ascii_lowercase()));
                }
                // The volume date's characters, as recorded.
                "iso9660" => assert!(uuid.chars().count() <= 22),
                _ => {
                    assert_eq!(uuid.len(), 36);
                    assert!(!uuid.chars().any(|c| c.is_ascii_uppercase()));
                }
            }
        }
    }
});
