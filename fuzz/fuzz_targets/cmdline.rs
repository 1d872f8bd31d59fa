#![no_main]
//! `cmdline::parse` must never panic on any command line, and what it returns
//! must hold together: every problem names a parameter and says something, a
//! fatal problem is reported as such, and parsing is deterministic.

use libfuzzer_sys::fuzz_target;
use overlay_init::cmdline::{parse, split, UpperSpec};

fuzz_target!(|data: &[u8]| {
    // The kernel hands /proc/cmdline over as bytes; overlay-init reads it lossily.
    let text = String::from_utf8_lossy(data);
    let parsed = parse(&text);
    assert_eq!(parsed, parse(&text), "parse is deterministic");
    for problem in &parsed.problems {
        assert!(!problem.param.is_empty(), "{problem:?}");
        assert!(!problem.message.is_empty(), "{problem:?}");
    }
    assert_eq!(
        parsed.has_fatal(),
        parsed.problems.iter().any(|p| p.fatal)
    );
    let config = &parsed.config;
    assert!(config.init.starts_with('/'), "init {:?}", config.init);
    // A failsafe boot never resets anything.
    assert!(!(config.failsafe && config.reset));
    // ovl.upperfstype only survives with a device upper.
    if config.upperfstype.is_some() {
        assert!(matches!(config.upper, UpperSpec::Device(_)));
    }
    // Words after the first `--` all reach the real init.
    let (_, after) = split(&text);
    assert_eq!(after.len(), config.init_args.len());
});
