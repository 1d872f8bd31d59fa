//! `/proc/cmdline` as the kernel gives it: bytes. A parameter that is not
//! UTF-8 is reported by its position and left out; the rest of the command
//! line is used (one odd byte must not drop `ovl.failsafe` or `root=`).

use crate::cmdline::Problem;

/// The command line as text, without its non-UTF-8 parameters, and one
/// (non-fatal) problem per parameter left out. Words are split as the kernel
/// splits them (blanks outside double quotes), so a quoted value with a bad
/// byte is left out whole.
pub fn decode(bytes: &[u8]) -> (String, Vec<Problem>) {
    let mut kept: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    let mut position = 0usize;
    let mut rest = bytes;
    loop {
        let start = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[start..];
        if rest.is_empty() {
            break;
        }
        let mut in_quote = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            if b.is_ascii_whitespace() && !in_quote {
                end = i;
                break;
            }
            if b == b'"' {
                in_quote = !in_quote;
            }
        }
        let (word, tail) = rest.split_at(end);
        rest = tail;
        position += 1;
        match std::str::from_utf8(word) {
            Ok(text) => kept.push(text),
            Err(_) => problems.push(Problem {
                param: format!("parameter {position}"),
                message: format!(
                    "{:?} is not UTF-8; ignored (the rest of the command line is used)",
                    String::from_utf8_lossy(word)
                ),
                fatal: false,
            }),
        }
    }
    (kept.join(" "), problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_utf8_parameter_is_dropped_alone_and_named_by_position() {
        let (text, problems) = decode(b"root=/dev/vda bad=\xff\xfe ovl.failsafe ovl.maxtries=2\n");
        assert_eq!(text, "root=/dev/vda ovl.failsafe ovl.maxtries=2");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].param, "parameter 2");
        assert!(!problems[0].fatal);
        let parsed = crate::cmdline::parse(&text);
        assert!(parsed.config.failsafe);
        assert_eq!(parsed.config.maxtries, 2);
    }

    #[test]
    fn quoted_words_stay_whole() {
        let (text, problems) = decode(b"a \"x \xff y\" init=/sbin/init -- \"p q\"");
        assert_eq!(text, "a init=/sbin/init -- \"p q\"");
        assert_eq!(problems[0].param, "parameter 2");
        let (text, problems) = decode(b"  plain text  ");
        assert_eq!((text.as_str(), problems.len()), ("plain text", 0));
    }
}
