#![no_main]
//! `probe::partition::parse_table` must never panic for any input, at any of the
//! common sector sizes, and what it returns must be well-formed.

use libfuzzer_sys::fuzz_target;
use overlay_init::probe::partition::parse_table;

fuzz_target!(|data: &[u8]| {
    for sector_size in [512, 1024, 4096] {
        if let Ok(Some(entries)) = parse_table(data, sector_size) {
            for pair in entries.windows(2) {
                assert!(pair[0].number < pair[1].number);
            }
            for entry in &entries {
                assert!(entry.number >= 1);
                assert!(entry.first_lba <= entry.last_lba);
                assert!(!entry.partuuid.chars().any(|c| c.is_ascii_uppercase()));
            }
        }
    }
});
