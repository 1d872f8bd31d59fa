//! A Debian bookworm systemd root with the overlay-init package installed as an image builder
//! installs it, booted in QEMU by the initramfs the package's kernel hook built in that root.
//!
//! Not part of `cargo test` (Cargo.toml: `test = false`): building the root takes minutes and
//! a systemd boot under TCG is slow. Run it with
//! `OVL_QEMU_JOBS=1 cargo test --test qemu_debian` (README.md, "Install it into a Debian image").
//!
//! The root comes from `qemu/build-debian-image` (cached under `$OVERLAY_INIT_CACHE` by the
//! digest of the .deb and the script): mmdebstrap, `dpkg -i` of the package, then
//! `apt-get install linux-image-cloud-amd64` in the chroot, whose postinst runs
//! `/etc/kernel/postinst.d/overlay-init`. Its ext4 image is the lower (read-only), a blank
//! ext4 image the upper. A test unit in the root prints `OVLPKG:` lines after
//! `overlay-init-mark-good.service` and powers off.

/// The harness (`tests/support/`).
use overlay_init_test_support as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::*;

/// A systemd boot of a Debian root under TCG on a loaded machine (scaled by
/// `OVL_QEMU_TIMEOUT_SCALE`).
const SYSTEMD_BOOT_TIMEOUT: Duration = Duration::from_secs(300);

struct Image {
    dir: PathBuf,
}

impl Image {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let started = Instant::now();
        let stdout =
            run(Command::new(repo_dir().join("debian/build-deb")).arg(work_dir().join("debian")));
        let deb = stdout.lines().last().unwrap_or_default().trim().to_string();
        let stdout = run(Command::new(repo_dir().join("qemu/build-debian-image")).arg(&deb));
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        assert!(
            dir.join("done").is_file(),
            "qemu/build-debian-image printed {stdout:?}"
        );
        eprintln!(
            "package + Debian image ready in {:.0?} (image build, when not cached: {} s)",
            started.elapsed(),
            std::fs::read_to_string(dir.join("build-seconds"))
                .unwrap_or_default()
                .trim()
        );
        Image { dir }
    })
}

fn boot_debian(upper: &Path, extra: &str) -> BootResult {
    let image = image();
    let result = boot(&BootSpec {
        kernel: Some(image.file("vmlinuz")),
        initrd: Initrd::Path(image.file("initrd.img")),
        disks: vec![Disk::ro(image.file("root.ext4")), Disk::rw(upper)],
        append: format!("root=/dev/vda ovl.upper=/dev/vdb {extra}"),
        timeout: SYSTEMD_BOOT_TIMEOUT,
        quiet: true,
        ..Default::default()
    });
    eprintln!(
        "boot ({extra}): {:.1?} wall, guest uptime at report {:?}",
        result.elapsed,
        result.values("OVLPKG: uptime=")
    );
    result
}

/// The JSON object the guest printed after `OVLPKG-JSON: `.
fn status_json(result: &BootResult) -> String {
    result
        .values("OVLPKG-JSON: ")
        .first()
        .unwrap_or_else(|| panic!("no status --json line:\n{}", result.console))
        .to_string()
}

#[test]
fn the_kernel_hook_ran_when_the_kernel_was_installed() {
    let image = image();
    let version = std::fs::read_to_string(image.file("kernel-version")).unwrap();
    let log = std::fs::read_to_string(image.file("build.log")).unwrap();
    let line = format!(
        "overlay-init: building /boot/initrd.img-overlay-{}",
        version.trim()
    );
    assert!(
        log.contains(&line),
        "no {line:?} in the image's build log:\n{log}"
    );
}

#[test]
fn debian_root_boots_marks_good_and_survives_failsafe() {
    let scratch = Scratch::new("debian-package");
    let upper = scratch.join("upper.ext4");
    make_ext4(&upper, 512, None, &["-L", "overlay"]);

    // A normal boot on the persistent upper: the boot counts 1 attempt, the unit runs
    // mark-good, and status --json then shows 0.
    let normal = boot_debian(&upper, "");
    assert_marker(
        &normal,
        "OVLPKG: unit=overlay-init-mark-good.service active=active result=success condition=yes is-failed=active",
    );
    assert_marker(
        &normal,
        "boot marked good: boot-attempt counter cleared (was 1)",
    );
    let json = status_json(&normal);
    for field in [
        "\"schema_version\":1",
        "\"mode\":\"normal\"",
        "\"boot_attempts\":0,",
        "\"maxtries\":3,",
        "\"upper\":\"/dev/vdb\"",
        "\"upper_fstype\":\"ext4\"",
        "\"lower_device\":\"/dev/vda\"",
        "\"lower_fstype\":\"ext4\"",
    ] {
        assert!(json.contains(field), "{field} not in {json}");
    }
    assert_exit(&normal, Exit::PowerOff);

    // A failsafe boot: the unit runs, leaves the counter, and does not fail.
    let failsafe = boot_debian(&upper, "ovl.failsafe");
    assert_marker(
        &failsafe,
        "OVLPKG: unit=overlay-init-mark-good.service active=active result=success condition=yes is-failed=active",
    );
    assert_marker(
        &failsafe,
        "failsafe boot (ovl.failsafe on the kernel command line)",
    );
    let failed = failsafe.values("OVLPKG: failed-units=");
    assert!(
        !failed.iter().any(|units| units.contains("overlay-init")),
        "{failed:?}"
    );
    let json = status_json(&failsafe);
    assert!(json.contains("\"mode\":\"failsafe\""), "{json}");
    assert!(json.contains("\"upper_read_only\":true"), "{json}");
    assert_exit(&failsafe, Exit::PowerOff);
}
