//! Never brick (issue 11): states of the upper, and of the command line, that
//! used to hang the boot or loop it forever, against the real kernel (uevent
//! sockets, loop devices, mount namespaces).
//!
//! Run: `cargo test --test netns_brick`

mod netns_support;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use overlay_init::cmdline;
use overlay_init::devspec::DeviceSpec;

/// Runs `f` in a thread; a call still running after `limit` fails the test
/// instead of hanging it.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}: the boot would hang"))
}

/// `rootwait` waits for the root without limit, never for the upper: a missing
/// `ovl.upper=` is given up after the default device timeout (30 s) and the
/// boot goes on with a tmpfs upper.
#[test]
fn rootwait_does_not_wait_forever_for_a_missing_upper() {
    let parsed = cmdline::parse("rootwait");
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let config = parsed.config;
    let label = netns_support::unique_label("absent");
    let started = Instant::now();
    let (found, upper) = within(Duration::from_secs(120), move || {
        let upper = DeviceSpec::parse(&format!("LABEL={label}")).unwrap();
        overlay_init::lower::wait_for_devices(&config, &[], Some(&upper))
            .map_err(|e| format!("{e:#}"))
    })
    .expect("a missing upper is not an error");
    assert!(found.is_empty());
    assert_eq!(upper, None);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(29),
        "gave up early: {waited:?}"
    );
}
