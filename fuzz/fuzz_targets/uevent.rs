#![no_main]
//! The uevent parsers must never panic: the netlink one on any datagram (the
//! kernel's, or garbage that got past the sender check), the sysfs one on any
//! `uevent` file. Both are deterministic.

use libfuzzer_sys::fuzz_target;
use overlay_init::uevent::{parse_netlink, parse_sysfs};

fuzz_target!(|data: &[u8]| {
    let netlink = parse_netlink(data);
    assert_eq!(format!("{netlink:?}"), format!("{:?}", parse_netlink(data)));
    if let Err(e) = &netlink {
        // Errors echo a bounded header.
        assert!(e.to_string().len() < 4096);
    }
    // sysfs: the first line is the devpath, the rest the file.
    let text = String::from_utf8_lossy(data);
    let (devpath, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let a = parse_sysfs(devpath, rest);
    assert_eq!(format!("{a:?}"), format!("{:?}", parse_sysfs(devpath, rest)));
});
