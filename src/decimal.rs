//! Decimal numbers for log lines from integers: durations in milliseconds or
//! seconds with a fixed number of decimals, and sizes in KiB/MiB/GiB with one.
//!
//! Integers rather than `f64` because the init prints these on every boot and
//! float formatting (`{:.1}` of an `f64`: core's Grisu/Dragon code) and float
//! parsing (`/proc/uptime` into an `f64`) cost about 15 KiB of the binary for
//! nothing integers cannot do. Rounding is to the nearest, halves up.

use std::fmt;
use std::time::Duration;

/// `units / 10^decimals`, shown with exactly `decimals` digits after the point:
/// `Fixed { units: 12345, decimals: 3 }` is `12.345`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    pub units: u64,
    pub decimals: u32,
}

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.decimals == 0 {
            return write!(f, "{}", self.units);
        }
        let scale = 10u64.pow(self.decimals);
        write!(
            f,
            "{}.{:0width$}",
            self.units / scale,
            self.units % scale,
            width = self.decimals as usize
        )
    }
}

/// `amount / divisor` rounded to the nearest `10^-decimals`, halves up
/// (u64 only, no 128-bit division: `divisor` ≤ 2^50, `decimals` ≤ 3).
fn rounded(amount: u64, divisor: u64, decimals: u32) -> Fixed {
    let scale = 10u64.pow(decimals);
    let fraction = ((amount % divisor) * scale + divisor / 2) / divisor;
    Fixed {
        units: (amount / divisor)
            .saturating_mul(scale)
            .saturating_add(fraction),
        decimals,
    }
}

/// Nanoseconds, saturating (585 years).
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// A duration in milliseconds with `decimals` (≤ 3) decimals: `12.3` (ms).
pub fn millis(d: Duration, decimals: u32) -> Fixed {
    rounded(nanos(d), 1_000_000, decimals)
}

/// A duration in seconds with `decimals` (≤ 3) decimals: `1.234` (s).
pub fn secs(d: Duration, decimals: u32) -> Fixed {
    rounded(nanos(d), 1_000_000_000, decimals)
}

/// `bytes` in the binary unit `scale` (1024 to 1024⁵) with one decimal: `1.5`.
pub fn in_unit(bytes: u64, scale: u64) -> Fixed {
    rounded(bytes, scale, 1)
}

/// A non-negative decimal number of seconds as the kernel prints them
/// (`/proc/uptime`: `1234.56`), as a duration; `None` for anything else.
/// Tests only: the init reads the uptime with `clock_gettime` (`sys::kmsg`),
/// and its tests compare that with `/proc/uptime`.
#[cfg(test)]
pub fn parse_secs(text: &str) -> Option<Duration> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    // Nanoseconds from the first nine digits of the fraction.
    let mut nanos = 0u32;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_shows_exactly_its_decimals() {
        assert_eq!(
            Fixed {
                units: 12345,
                decimals: 3
            }
            .to_string(),
            "12.345"
        );
        assert_eq!(
            Fixed {
                units: 5,
                decimals: 3
            }
            .to_string(),
            "0.005"
        );
        assert_eq!(
            Fixed {
                units: 120,
                decimals: 1
            }
            .to_string(),
            "12.0"
        );
        assert_eq!(
            Fixed {
                units: 7,
                decimals: 0
            }
            .to_string(),
            "7"
        );
    }

    #[test]
    fn durations_round_as_float_formatting_did() {
        // The same text as `format!("{:.1}", d.as_secs_f64() * 1e3)` gave.
        for nanos in [0u64, 49_999, 50_001, 1_234_567, 999_999_999, 12_345_678_901] {
            let d = Duration::from_nanos(nanos);
            assert_eq!(
                millis(d, 1).to_string(),
                format!("{:.1}", d.as_secs_f64() * 1e3),
                "{nanos} ns"
            );
            assert_eq!(
                secs(d, 3).to_string(),
                format!("{:.3}", d.as_secs_f64()),
                "{nanos} ns"
            );
        }
        assert_eq!(millis(Duration::from_micros(12_350), 1).to_string(), "12.4");
        assert_eq!(secs(Duration::from_millis(2500), 1).to_string(), "2.5");
    }

    #[test]
    fn sizes_round_as_float_formatting_did() {
        for (bytes, scale) in [
            (1536u64, 1024u64),
            (3 << 29, 1 << 30),
            ((1 << 20) - 1, 1 << 10),
            (123_456_789, 1 << 20),
            (u64::MAX, 1 << 40),
        ] {
            assert_eq!(
                in_unit(bytes, scale).to_string(),
                format!("{:.1}", bytes as f64 / scale as f64),
                "{bytes} / {scale}"
            );
        }
    }

    #[test]
    fn uptime_text_parses_to_a_duration() {
        assert_eq!(
            parse_secs("1234.56"),
            Some(Duration::new(1234, 560_000_000))
        );
        assert_eq!(parse_secs("0.01"), Some(Duration::from_millis(10)));
        assert_eq!(parse_secs("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_secs("1.1234567891"),
            Some(Duration::new(1, 123_456_789))
        );
        for bad in ["", ".5", "-1.0", "1.2.3", "1e3", "x", "1.x", " 1.0"] {
            assert_eq!(parse_secs(bad), None, "{bad:?}");
        }
    }
}
