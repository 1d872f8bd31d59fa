//! The Debian package and its kernel hooks. Run: `cargo test --test qemu package::`.
//!
//! - `debian/build-deb` builds the .deb; `dpkg-deb -c` lists every file the package promises;
//!   `lintian` reports no error (the one override, the static init, is in
//!   debian/overlay-init.lintian-overrides with its reason).
//! - The kernel hooks of `dist/kernel/` run as a kernel package runs them, against the cached
//!   Debian kernel's module tree: the postinst hook builds the initramfs named by the
//!   configuration (with its extra module), a failed build fails the hook and keeps the old
//!   file, and the postrm hook removes it on `remove` only.
//!
//! The QEMU boot of a Debian root with the package installed is `cargo test --test qemu_debian`
//! (too slow for the suite: see README.md, "Install it into a Debian image").

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::*;

/// Builds the package once per test process; its path.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = work_dir().join("debian");
        let mut command = Command::new(repo_dir().join("debian/build-deb"));
        command.arg(&out);
        let stdout = run(&mut command);
        let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        assert!(deb.is_file(), "debian/build-deb printed {stdout:?}");
        deb
    })
}

#[test]
fn the_package_holds_every_promised_file() {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(package()));
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .collect();
    for expected in [
        "./usr/sbin/overlay-init",
        "./usr/sbin/overlay-init-mkinitramfs",
        "./lib/systemd/system/overlay-init-mark-good.service",
        "./lib/systemd/system-preset/50-overlay-init.preset",
        "./etc/kernel/postinst.d/overlay-init",
        "./etc/kernel/postrm.d/overlay-init",
        "./etc/overlay-init/mkinitramfs.conf",
        "./usr/share/man/man8/overlay-init.8.gz",
        "./usr/share/man/man8/overlay-init-mkinitramfs.8.gz",
        "./usr/share/man/man7/overlay-init.7.gz",
        "./usr/share/doc/overlay-init/README.md.gz",
        "./usr/share/doc/overlay-init/failsafe.md.gz",
        "./usr/share/doc/overlay-init/examples/overlay-init-mark-good.procd",
        "./usr/share/doc/overlay-init/examples/inittab",
        "./usr/share/doc/overlay-init/copyright",
    ] {
        assert!(
            paths.contains(&expected),
            "dpkg-deb -c has no {expected}:\n{listing}"
        );
    }
    // No mkinitramfs that would shadow initramfs-tools'.
    assert!(
        !paths.iter().any(|p| p.ends_with("/mkinitramfs")),
        "{listing}"
    );
    // The hooks are executable (run-parts skips the others) and the config is a conffile.
    for hook in [
        "./etc/kernel/postinst.d/overlay-init",
        "./etc/kernel/postrm.d/overlay-init",
    ] {
        let line = listing.lines().find(|l| l.ends_with(hook)).unwrap();
        assert!(line.starts_with("-rwxr-xr-x"), "{line}");
    }
    let control = work_dir().join("debian/control");
    let _ = std::fs::remove_dir_all(&control);
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(package())
        .arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/overlay-init/mkinitramfs.conf"),
        "{conffiles}"
    );
    // The unit is enabled by the postinst, never started by it.
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("deb-systemd-helper enable 'overlay-init-mark-good.service'"),
        "{postinst}"
    );
    assert!(!postinst.contains("deb-systemd-invoke"), "{postinst}");
}

#[test]
fn the_static_init_in_the_package_is_the_cli_too() {
    let dir = work_dir().join("debian/extract");
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("dpkg-deb").arg("-x").arg(package()).arg(&dir));
    let init = dir.join("usr/sbin/overlay-init");
    let version = run(Command::new(&init).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("overlay-init {}", env!("CARGO_PKG_VERSION"))
    );
    // Statically linked: ldd has nothing to load.
    let ldd = Command::new("ldd").arg(&init).output().unwrap();
    assert!(
        !ldd.status.success() || String::from_utf8_lossy(&ldd.stdout).contains("statically"),
        "{ldd:?}"
    );
    let builder = run(Command::new(dir.join("usr/sbin/overlay-init-mkinitramfs")).arg("--help"));
    assert!(
        builder.starts_with("usage: overlay-init-mkinitramfs"),
        "{builder}"
    );
}

#[test]
fn lintian_reports_no_error() {
    let output = Command::new("lintian")
        .arg("--pedantic")
        .arg("--allow-root")
        .arg(package())
        .output()
        .expect("run lintian (Debian package: lintian; tests/run installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty(),
        "lintian errors:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // lintian exits 2 when it could not check at all; 1 only for tags at the fail level.
    assert_ne!(output.status.code(), Some(2), "{output:?}");
    eprintln!("lintian:\n{text}");
}

/// Runs a hook from `dist/kernel/` as the kernel package does: `HOOK VERSION IMAGE`, with
/// the configuration file and the builder taken from this build.
fn run_hook(
    kind: &str,
    version: &str,
    conf: &Path,
    maint_params: Option<&str>,
) -> std::process::Output {
    let builder = PathBuf::from(env!("CARGO_BIN_EXE_overlay-init-mkinitramfs"));
    let path = format!(
        "{}:{}",
        builder.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(repo_dir().join(format!("dist/kernel/{kind}.d/overlay-init")));
    command
        .arg(version)
        .arg(format!("/boot/vmlinuz-{version}"))
        .env("PATH", path)
        .env("OVERLAY_INIT_MKINITRAMFS_CONF", conf)
        .env_remove("DEB_MAINT_PARAMS");
    if let Some(params) = maint_params {
        command.env("DEB_MAINT_PARAMS", params);
    }
    command.output().unwrap()
}

/// The names in a gzip'd newc cpio (via `cpio -t`).
fn cpio_names(archive: &Path) -> Vec<String> {
    let output = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | cpio -t --quiet")
        .arg("sh")
        .arg(archive)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn kernel_hooks_build_and_remove_the_initramfs_as_configured() {
    let kernel = kernel();
    let version = kernel
        .modules
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let scratch = Scratch::new("kernel-hooks");
    let conf = scratch.join("mkinitramfs.conf");
    let boot_dir = scratch.join("boot");
    std::fs::create_dir_all(&boot_dir).unwrap();
    let write_conf = |modules: &str| {
        write_file(
            &conf,
            format!(
                "OUTPUT=\"{}/initrd.img-overlay-${{KERNEL_VERSION}}\"\n\
                 MODULES_DIR=\"{}\"\nINIT=\"{}\"\nMODULES=\"{modules}\"\n\
                 FILES=\"{}:/etc/hook-test\"\n",
                boot_dir.display(),
                kernel.modules.display(),
                env!("CARGO_BIN_EXE_overlay-init"),
                conf.display(),
            ),
            0o644,
        )
    };
    // ext4 (a module in Debian's cloud kernel, or built in) comes from the configuration;
    // a module that is neither in the default set nor configured must not be there.
    write_conf("ext4");
    let output = run_hook("postinst", &version, &conf, None);
    assert!(output.status.success(), "{output:?}");
    let initrd = boot_dir.join(format!("initrd.img-overlay-{version}"));
    let names = cpio_names(&initrd);
    assert!(names.iter().any(|n| n == "init"), "{names:?}");
    assert!(names.iter().any(|n| n == "etc/hook-test"), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("virtio_blk.ko")),
        "{names:?}"
    );
    let builtin = std::fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap();
    if !builtin.contains("/ext4.ko") {
        assert!(names.iter().any(|n| n.ends_with("/ext4.ko")), "{names:?}");
    }
    assert!(!names.iter().any(|n| n.ends_with("/nvme.ko")), "{names:?}");
    assert!(!boot_dir
        .join(format!("initrd.img-overlay-{version}.new"))
        .exists());
    let good = std::fs::read(&initrd).unwrap();

    // A build that fails (a module that does not exist) fails the hook, so the kernel's
    // installation fails, and the previous initramfs is left as it was.
    write_conf("no_such_module_xyz");
    let output = run_hook("postinst", &version, &conf, None);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no_such_module_xyz"),
        "{output:?}"
    );
    assert_eq!(std::fs::read(&initrd).unwrap(), good);

    // No version: a usage error, exit 2.
    let bare = Command::new(repo_dir().join("dist/kernel/postinst.d/overlay-init"))
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(2), "{bare:?}");

    // postrm: the kernel package runs it on purge too; only remove deletes.
    write_conf("ext4");
    let output = run_hook("postrm", &version, &conf, Some("purge"));
    assert!(output.status.success(), "{output:?}");
    assert!(initrd.exists());
    let output = run_hook("postrm", &version, &conf, Some("remove"));
    assert!(output.status.success(), "{output:?}");
    assert!(!initrd.exists());
}
