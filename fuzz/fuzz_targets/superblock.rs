#![no_main]
//! `probe::superblock::detect` must never panic, and an answer must not depend
//! on bytes past PROBE_BYTES.

use libfuzzer_sys::fuzz_target;
use overlay_init::probe::superblock::{detect, PROBE_BYTES};

fuzz_target!(|data: &[u8]| {
    let result = detect(data);
    if data.len() > PROBE_BYTES {
        assert_eq!(result, detect(&data[..PROBE_BYTES]));
    }
    if let Ok(Some(info)) = result {
        if let Some(uuid) = &info.uuid {
            assert_eq!(uuid.len(), 36);
            assert!(!uuid.chars().any(|c| c.is_ascii_uppercase()));
        }
    }
});
