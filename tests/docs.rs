//! The documentation matches the code: every `ovl.*` parameter the parser accepts is in the
//! kernel command-line manual (`man/overlay-init.7.scd`) and in README.md, and no other
//! `ovl.*` name appears in the manuals or the README; every `status --json` field is in
//! `overlay-init(8)`; the exit codes the manual lists are the CLI's. Run:
//! `cargo test --test docs`.
//!
//! The accepted names come from the parser's own list, `cmdline::OVL_PARAMS`, and the first
//! test checks that list against the parser (each name parses without an "unknown
//! parameter" problem, and a name not on it is rejected), so a parameter added to the parser
//! but not to the list fails here too.

use std::collections::BTreeSet;
use std::path::PathBuf;

use overlay_init::cmdline::{self, OVL_PARAMS};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// scdoc source as text: `\_` and `\*` are escapes for `_` and `*`.
fn scdoc_text(path: &str) -> String {
    read(path).replace("\\_", "_").replace("\\*", "*")
}

/// Every `ovl.NAME` in a text, `-` folded to `_` as the parser does. A name starts with a
/// letter, so `ovl.*` and a sentence ending in "ovl." are not names.
fn ovl_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ovl.") {
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_' && c != '-' && c != '/');
        let tail = &rest[at + 4..];
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        if before_ok && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            names.insert(name.trim_end_matches('-').replace('-', "_"));
        }
        rest = tail;
    }
    names
}

fn accepted() -> BTreeSet<String> {
    OVL_PARAMS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect()
}

fn unknown_problem(cmdline_text: &str) -> bool {
    cmdline::parse(cmdline_text)
        .problems
        .iter()
        .any(|p| p.message.starts_with("unknown parameter"))
}

#[test]
fn the_list_is_what_the_parser_accepts() {
    for (name, _) in OVL_PARAMS {
        for form in [format!("ovl.{name}"), format!("ovl.{name}=1")] {
            assert!(
                !unknown_problem(&form),
                "{form}: on OVL_PARAMS but the parser calls it unknown"
            );
        }
    }
    assert!(unknown_problem("ovl.nonsense=1"));
}

#[test]
fn every_accepted_parameter_is_in_the_man_page_and_the_readme() {
    let man = ovl_names(&scdoc_text("man/overlay-init.7.scd"));
    let readme = ovl_names(&read("README.md"));
    let accepted = accepted();
    let missing_man: Vec<_> = accepted.difference(&man).collect();
    let missing_readme: Vec<_> = accepted.difference(&readme).collect();
    assert!(
        missing_man.is_empty(),
        "accepted by the parser, missing from man/overlay-init.7.scd: {missing_man:?}"
    );
    assert!(
        missing_readme.is_empty(),
        "accepted by the parser, missing from README.md: {missing_readme:?}"
    );
}

#[test]
fn no_other_parameter_is_documented() {
    let accepted = accepted();
    for path in [
        "man/overlay-init.7.scd",
        "man/overlay-init.8.scd",
        "man/overlay-init-mkinitramfs.8.scd",
        "README.md",
    ] {
        let text = if path.ends_with(".scd") {
            scdoc_text(path)
        } else {
            read(path)
        };
        let names = ovl_names(&text);
        let extra: Vec<_> = names.difference(&accepted).collect();
        assert!(
            extra.is_empty(),
            "{path} documents ovl.* names the parser does not accept: {extra:?}"
        );
    }
}

#[test]
fn the_name_scanner_finds_names_and_only_names() {
    let names =
        ovl_names("`ovl.upper=X`, *ovl.failsafe-wait=*, ovl.* and prefix `ovl.`; ovl.debug.");
    let expected: BTreeSet<String> = ["upper", "failsafe_wait", "debug"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn every_status_json_field_is_documented() {
    let man = scdoc_text("man/overlay-init.8.scd");
    let section = man
        .split("# STATUS JSON")
        .nth(1)
        .and_then(|s| s.split("\n# ").next())
        .expect("overlay-init(8) has a STATUS JSON section");
    for field in overlay_init::status::FIELDS {
        assert!(
            section.contains(&format!("\n*{field}*\n")),
            "status --json field {field} is not described in overlay-init(8), STATUS JSON"
        );
    }
    // And the manual describes no field the tool does not print.
    let described: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix('*')?.strip_suffix('*'))
        .filter(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    for field in described {
        assert!(
            overlay_init::status::FIELDS.contains(&field),
            "overlay-init(8) describes a status field the tool does not print: {field}"
        );
    }
}

#[test]
fn the_exit_codes_in_the_manual_are_the_cli_s() {
    use overlay_init::cli::{EXIT_FAILURE, EXIT_NOT_BOOTED, EXIT_OK, EXIT_USAGE};
    let man = scdoc_text("man/overlay-init.8.scd");
    let section = man
        .split("# EXIT STATUS")
        .nth(1)
        .and_then(|s| s.split("\n# ").next())
        .expect("overlay-init(8) has an EXIT STATUS section");
    for (code, words) in [
        (EXIT_OK, "Done"),
        (EXIT_FAILURE, "failed"),
        (EXIT_USAGE, "Bad arguments"),
        (EXIT_NOT_BOOTED, "not booted by overlay-init"),
    ] {
        let entry = section
            .split(&format!("\n*{code}*\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("exit code {code} is not in overlay-init(8)"));
        let first_line = entry.lines().next().unwrap_or_default();
        assert!(
            first_line.contains(words),
            "exit code {code}: expected {words:?}, manual says {first_line:?}"
        );
    }
    // The one line a system not booted by overlay-init gets is quoted as the tool prints it.
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = overlay_init::cli::not_booted_message(std::path::Path::new(
        overlay_init::state::STATE_PATH,
    ));
    assert!(
        words(section).contains(&line),
        "overlay-init(8) EXIT STATUS does not quote {line:?}"
    );
}
