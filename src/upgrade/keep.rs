//! The keep-list, `/etc/overlay-init/keep`: what a reset carries from the old
//! upper into the fresh one.
//!
//! Format: one absolute path or glob per line; blank lines and lines starting
//! with `#` are ignored; leading and trailing blanks are trimmed; a trailing
//! `/` is ignored. A kept path keeps everything below it. Bad lines are
//! reported with their number and skipped; the good ones still apply.
//!
//! Globs, matched one path component at a time (a `/` is never matched by a
//! wildcard):
//!
//! | pattern | matches |
//! |---|---|
//! | `*` | any run of characters in one component, a leading `.` included |
//! | `?` | one character |
//! | `[abc]`, `[a-z]`, `[!a-z]` / `[^a-z]` | one character of (not of) the set |
//! | `**` (a whole component) | zero or more components |
//! | `\c` | the character `c` itself |
//!
//! Unlike a shell, `*` matches dotfiles: `/root/*` keeps `/root/.ssh`. Names
//! are raw bytes; a pattern matches bytes, not characters (`?` is one byte).

use std::fmt;

/// One parsed keep-list line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The line as written (trimmed).
    pub text: String,
    /// 1-based line number.
    pub line: usize,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `**`
    AnyDepth,
    /// A component pattern; `literal` when it has no wildcard.
    Component { glob: Vec<Tok>, literal: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    Any,
    Star,
    Set { negated: bool, items: Vec<(u8, u8)> },
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keep-list line {}: {:?}: {}; line skipped",
            self.line, self.text, self.reason
        )
    }
}

/// A parsed keep-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepList {
    pub patterns: Vec<Pattern>,
    pub bad: Vec<BadLine>,
}

/// Where the keep-list lives in the merged root.
pub const KEEP_LIST_PATH: &str = "/etc/overlay-init/keep";

/// Parse a keep-list file. Never fails: bad lines land in [`KeepList::bad`].
pub fn parse(bytes: &[u8]) -> KeepList {
    let mut list = KeepList::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = String::from_utf8_lossy(raw).into_owned();
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        let shown = String::from_utf8_lossy(trimmed).into_owned();
        match parse_pattern(trimmed) {
            Ok(parts) => list.patterns.push(Pattern {
                text: shown,
                line,
                parts,
            }),
            Err(reason) => list.bad.push(BadLine {
                line,
                text: if text.len() > 200 {
                    shown[..shown.len().min(200)].to_string()
                } else {
                    shown
                },
                reason,
            }),
        }
    }
    list
}

fn parse_pattern(raw: &[u8]) -> Result<Vec<Part>, String> {
    if raw[0] != b'/' {
        return Err("not an absolute path (must start with /)".into());
    }
    if raw.contains(&0) {
        return Err("contains a NUL byte".into());
    }
    let mut parts = Vec::new();
    for comp in raw.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        match comp {
            b"." | b".." => return Err("'.' and '..' components are not allowed".into()),
            b"**" => {
                if parts.last() != Some(&Part::AnyDepth) {
                    parts.push(Part::AnyDepth);
                }
            }
            _ => {
                let glob = parse_glob(comp)?;
                let literal = glob.iter().all(|t| matches!(t, Tok::Byte(_)));
                parts.push(Part::Component { glob, literal });
            }
        }
    }
    if parts.is_empty() || parts == [Part::AnyDepth] {
        return Err("keeps everything; a reset would then change nothing".into());
    }
    Ok(parts)
}

fn parse_glob(comp: &[u8]) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < comp.len() {
        match comp[i] {
            b'*' => {
                if comp.get(i + 1) == Some(&b'*') {
                    return Err("'**' must be a whole path component".into());
                }
                toks.push(Tok::Star);
            }
            b'?' => toks.push(Tok::Any),
            b'\\' => {
                i += 1;
                let c = *comp.get(i).ok_or("a trailing '\\' escapes nothing")?;
                toks.push(Tok::Byte(c));
            }
            b'[' => {
                let (tok, used) = parse_set(&comp[i..])?;
                toks.push(tok);
                i += used;
                continue;
            }
            c => toks.push(Tok::Byte(c)),
        }
        i += 1;
    }
    Ok(toks)
}

/// Parse `[...]` at the start of `s`; returns the token and the bytes used.
fn parse_set(s: &[u8]) -> Result<(Tok, usize), String> {
    let mut i = 1;
    let negated = matches!(s.get(1), Some(b'!') | Some(b'^'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let c = *s.get(i).ok_or("'[' without a closing ']'")?;
        if c == b']' && !first {
            return Ok((Tok::Set { negated, items }, i + 1));
        }
        first = false;
        let c = if c == b'\\' {
            i += 1;
            *s.get(i).ok_or("'[' without a closing ']'")?
        } else {
            c
        };
        if s.get(i + 1) == Some(&b'-') && s.get(i + 2).is_some_and(|&e| e != b']') {
            let end = s[i + 2];
            if end < c {
                return Err(format!("range {}-{} is backwards", c as char, end as char));
            }
            items.push((c, end));
            i += 3;
        } else {
            items.push((c, c));
            i += 1;
        }
    }
}

fn match_glob(glob: &[Tok], name: &[u8]) -> bool {
    // Iterative matcher with backtracking to the last star: linear in practice.
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match glob.get(g) {
            Some(Tok::Star) => {
                star = Some((g, n));
                g += 1;
                continue;
            }
            Some(Tok::Any) => true,
            Some(Tok::Byte(b)) => *b == name[n],
            Some(Tok::Set { negated, items }) => {
                items.iter().any(|&(lo, hi)| (lo..=hi).contains(&name[n])) != *negated
            }
            None => false,
        };
        if step {
            g += 1;
            n += 1;
        } else if let Some((sg, sn)) = star {
            g = sg + 1;
            n = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|t| *t == Tok::Star)
}

/// Match pattern parts against path components. `partial`: also true when the
/// path is a prefix of something the pattern could match (a directory worth
/// descending into).
fn match_parts(parts: &[Part], path: &[&[u8]], partial: bool) -> bool {
    match (parts.first(), path.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(Part::AnyDepth), None) => match_parts(&parts[1..], path, partial),
        (Some(_), None) => partial,
        (Some(Part::AnyDepth), Some(_)) => {
            // Zero components, or swallow one and stay on `**`.
            match_parts(&parts[1..], path, partial) || match_parts(parts, &path[1..], partial)
        }
        (Some(Part::Component { glob, .. }), Some(name)) => {
            match_glob(glob, name) && match_parts(&parts[1..], &path[1..], partial)
        }
    }
}

impl Pattern {
    /// Does this pattern name the path (components without `/`)?
    pub fn matches(&self, path: &[&[u8]]) -> bool {
        match_parts(&self.parts, path, false)
    }

    /// Could something below the directory `path` match?
    pub fn may_match_below(&self, path: &[&[u8]]) -> bool {
        match_parts(&self.parts, path, true)
    }
}

impl KeepList {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first pattern naming `path`, if any.
    pub fn matching(&self, path: &[&[u8]]) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.matches(path))
    }

    /// Is a walk into the directory `path` needed to find kept entries?
    pub fn may_match_below(&self, path: &[&[u8]]) -> bool {
        self.patterns.iter().any(|p| p.may_match_below(path))
    }
}

/// Split an absolute or relative path into its components (bytes).
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeps(list: &KeepList, path: &str) -> bool {
        list.matching(&components(path.as_bytes())).is_some()
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_skipped() {
        let list = parse(
            b"# comment\n\n/etc/app.conf\netc/relative\n  /root/.ssh/  \n/a/../b\n/x[a-\n/\n/**\n/bad**name\n/ok\\\n/etc/*.conf\n",
        );
        let good: Vec<_> = list
            .patterns
            .iter()
            .map(|p| (p.line, p.text.as_str()))
            .collect();
        assert_eq!(
            good,
            [
                (3, "/etc/app.conf"),
                (5, "/root/.ssh/"),
                (12, "/etc/*.conf")
            ]
        );
        let bad: Vec<_> = list.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, [4, 6, 7, 8, 9, 10, 11]);
        assert!(list.bad[0].to_string().contains("line 4"));
        assert!(list.bad[0].reason.contains("absolute"));
    }

    #[test]
    fn literal_paths_keep_themselves_and_below() {
        let list = parse(b"/etc/app.conf\n/root/.ssh\n");
        assert!(keeps(&list, "/etc/app.conf"));
        assert!(keeps(&list, "/root/.ssh"));
        assert!(
            !keeps(&list, "/root/.ssh/id_rsa"),
            "below is carried with the match, not matched"
        );
        assert!(!keeps(&list, "/etc/app.conf2"));
        assert!(!keeps(&list, "/etc"));
        assert!(!keeps(&list, "/root/.secret"));
        assert!(list.may_match_below(&components(b"/etc")));
        assert!(list.may_match_below(&components(b"/")));
        assert!(!list.may_match_below(&components(b"/usr")));
    }

    #[test]
    fn globs_match_one_component_dotfiles_included() {
        let list = parse(b"/etc/*.conf\n/home/?/x\n/srv/[a-c]*\n/opt/[!a]z\n/var/lib/\\*\n");
        assert!(keeps(&list, "/etc/app.conf"));
        assert!(keeps(&list, "/etc/.conf"));
        assert!(!keeps(&list, "/etc/sub/app.conf"));
        assert!(keeps(&list, "/home/a/x"));
        assert!(!keeps(&list, "/home/ab/x"));
        assert!(keeps(&list, "/srv/beta"));
        assert!(!keeps(&list, "/srv/delta"));
        assert!(keeps(&list, "/opt/bz"));
        assert!(!keeps(&list, "/opt/az"));
        assert!(keeps(&list, "/var/lib/*"));
        assert!(!keeps(&list, "/var/lib/x"));
        assert!(keeps(&parse(b"/root/*\n"), "/root/.ssh"));
    }

    #[test]
    fn double_star_spans_directories() {
        let list = parse(b"/etc/**/*.key\n/data/**\n");
        assert!(keeps(&list, "/etc/a.key"));
        assert!(keeps(&list, "/etc/x/y/z.key"));
        assert!(!keeps(&list, "/etc/x/y/z.pem"));
        assert!(keeps(&list, "/data/anything/at/all"));
        assert!(list.may_match_below(&components(b"/etc/x/y")));
        assert!(!list.may_match_below(&components(b"/usr/x")));
    }

    #[test]
    fn star_backtracks() {
        let g = parse_glob(b"a*b*c").unwrap();
        assert!(match_glob(&g, b"aXbYbZc"));
        assert!(!match_glob(&g, b"aXbYbZ"));
        assert!(match_glob(&parse_glob(b"*").unwrap(), b""));
    }

    #[test]
    fn non_utf8_lines_and_names_are_bytes() {
        let list = parse(b"/etc/\xff*\n");
        assert_eq!(list.patterns.len(), 1);
        assert!(list.matching(&[b"etc", b"\xffabc"]).is_some());
    }
}
