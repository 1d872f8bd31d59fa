#![no_main]
//! `ModuleIndex::parse` must never panic, and an index it accepts renders to
//! text that parses back to the same index; dependency closures stay in range.

use libfuzzer_sys::fuzz_target;
use overlay_init::modindex::ModuleIndex;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(index) = ModuleIndex::parse(&text) else {
        return;
    };
    let rendered = index.render();
    let again = ModuleIndex::parse(&rendered).expect("a rendered index parses");
    assert_eq!(again, index);
    let names: Vec<String> = index.entries.iter().map(|e| e.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for position in index.closure(&names) {
        assert!(position < index.entries.len());
    }
    for position in index.eager(&names[..names.len().min(2)]) {
        assert!(position < index.entries.len());
    }
});
