#![no_main]
//! The mountinfo parser must never panic on any text (`/proc/self/mountinfo`
//! as read, including odd escapes), and a line it accepts yields the same
//! entry when parsed alone.

use libfuzzer_sys::fuzz_target;
use overlay_init::mountinfo::{parse_mountinfo, parse_mountinfo_line, unescape_octal};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let all = parse_mountinfo(&text);
    let one_by_one: Vec<_> = text.lines().filter_map(parse_mountinfo_line).collect();
    assert_eq!(format!("{all:?}"), format!("{one_by_one:?}"));
    let _ = unescape_octal(&text);
});
