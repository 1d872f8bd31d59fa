#![no_main]
//! The state files on the upper and in /run: the boot counter, the boot state
//! and the raw command line. No input may panic; what the boot writes reads
//! back the same.

use libfuzzer_sys::fuzz_target;
use overlay_init::bootcount;
use overlay_init::state::BootState;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = bootcount::parse(data) {
        assert_eq!(bootcount::parse(&bootcount::render(n)), Ok(n));
        let next = bootcount::next(n);
        assert!(next >= n);
        assert_eq!(bootcount::parse(&bootcount::render(next)), Ok(next));
    }
    let text = String::from_utf8_lossy(data);
    let state = BootState::parse(&text);
    let rendered = state.render();
    assert_eq!(BootState::parse(&rendered).render(), rendered);
    let _ = state.describe();
    // /proc/cmdline as bytes: every word kept is valid text, every word left
    // out is reported, and the text kept parses without panicking.
    let (kept, problems) = overlay_init::cmdline_bytes::decode(data);
    assert!(problems.iter().all(|p| !p.fatal && p.param.starts_with("parameter ")));
    let _ = overlay_init::cmdline::parse(&kept);
});
