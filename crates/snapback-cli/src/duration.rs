//! The one duration syntax of every duration flag and config value
//! (docs/scripting.md states it): humantime's (`30s`, `15m`, `1.5h`, `7d`,
//! `2w`, `1h30m`, `1d 12h`, `500ms`), with months and years refused, since
//! they have no fixed length (humantime reads `M` as 30.44 days and `y` as
//! 365.25 days): a retention of `1y` would keep a different span than the
//! user meant. A bad value is a usage error (exit 2) that names the units.

use std::time::Duration;

/// The units, as the messages name them.
const UNITS: &str =
    "ms, s (seconds), m (minutes), h (hours), d (days), w (weeks); months and years are refused, use days";

/// Parses a duration such as `30m`, `12h`, `7d` or `1d12h`. A bare number
/// (no unit) is refused: `12` could be seconds or days.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let bad = |why: String| crate::Usage(format!("invalid duration '{s}': {why}"));
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(format!(
            "write it like 30m, 12h, 7d or 1d12h; units: {UNITS}"
        ))
        .into());
    }
    if t.starts_with('-') {
        return Err(bad("a duration cannot be negative".into()).into());
    }
    if let Some(unit) = units(t).find(|u| is_month(u) || is_year(u)) {
        let what = if is_month(unit) { "months" } else { "years" };
        return Err(bad(format!(
            "{what} have no fixed length ('{unit}'): use days (30d, 365d) or weeks (4w); units: {UNITS}"
        ))
        .into());
    }
    humantime::parse_duration(t).map_err(|e| {
        use humantime::DurationError as E;
        let why = match e {
            E::NumberExpected(i) => format!(
                "expected a number at '{}'; write it like 30m, 12h, 7d or 1d12h",
                t[i..].chars().next().unwrap_or(' ')
            ),
            E::InvalidCharacter(i) => format!(
                "unexpected '{}': write numbers, each with a unit, like 30m, 1.5h or 1d12h; units: {UNITS}",
                t[i..].chars().next().unwrap_or(' ')
            ),
            E::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                format!("'{value}' has no unit; units: {UNITS}")
            }
            E::UnknownUnit { unit, .. } => format!("unknown unit '{unit}'; units: {UNITS}"),
            E::NumberOverflow => "the number is too large".into(),
            E::Empty => format!("write it like 30m, 12h, 7d or 1d12h; units: {UNITS}"),
        };
        bad(why).into()
    })
}

/// A duration flag that took a number of seconds before it took durations
/// (`--lock-wait`, `--busy-timeout`, `--max-wait`, the mount's timeouts):
/// a bare number, `300` or `0.5`, is still seconds; anything else is
/// [`parse_duration`].
pub fn parse_seconds_or_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return match t.parse::<f64>() {
            Ok(v) if v.is_finite() && v < 1e12 => Ok(Duration::from_secs_f64(v)),
            _ => Err(crate::Usage(format!(
                "invalid duration '{s}': write a number of seconds (30, 0.5) or a duration (30s, 5m, 1h); units: {UNITS}"
            ))
            .into()),
        };
    }
    parse_duration(s)
}

/// The units written in `s`: each run of letters.
fn units(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !c.is_alphabetic())
        .filter(|u| !u.is_empty())
}

fn is_month(u: &str) -> bool {
    u == "M" || u.to_ascii_lowercase().starts_with("mo")
}

fn is_year(u: &str) -> bool {
    matches!(
        u.to_ascii_lowercase().as_str(),
        "y" | "yr" | "yrs" | "year" | "years"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse_duration(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_secs()
    }

    #[test]
    fn durations_in_humantime_syntax_are_accepted() {
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("30m"), 1800);
        assert_eq!(secs("12h"), 43_200);
        assert_eq!(secs("1d12h"), 129_600);
        assert_eq!(secs("1d 12h"), 129_600);
        assert_eq!(secs("2w"), 1_209_600);
        assert_eq!(secs("7days"), 604_800);
        assert_eq!(secs("1.5h"), 5400);
        assert_eq!(secs("0s"), 0);
        assert_eq!(secs(" 24h "), 86_400);
        assert_eq!(
            parse_duration("1500ms").expect("ms"),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("1s500ms").expect("s ms"),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn months_and_years_are_refused_with_a_hint_to_use_days() {
        for bad in [
            "1mo", "2months", "1month", "3M", "1y", "2years", "1yr", "1d1y",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.downcast_ref::<crate::Usage>().is_some(), "{bad}: exit 2");
            let msg = e.to_string();
            assert!(
                msg.contains("have no fixed length") && msg.contains("use days (30d, 365d)"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn bad_durations_are_usage_errors_that_name_the_units() {
        for (bad, says) in [
            ("", "write it like 30m"),
            ("12", "'12' has no unit"),
            ("5x", "unknown unit 'x'"),
            ("h", "expected a number"),
            ("-1d", "cannot be negative"),
            ("1h!", "unexpected '!'"),
            ("99999999999999999999s", "too large"),
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.downcast_ref::<crate::Usage>().is_some(), "{bad}: exit 2");
            let msg = e.to_string();
            assert!(msg.contains(says), "{bad}: {msg}");
            assert!(msg.contains(&format!("invalid duration '{bad}'")), "{msg}");
        }
        let msg = parse_duration("5x").expect_err("5x").to_string();
        assert!(msg.contains("d (days)"), "the units are named: {msg}");
    }

    #[test]
    fn seconds_flags_take_a_bare_number_of_seconds_or_a_duration() {
        let p = |s: &str| parse_seconds_or_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(p("300"), Duration::from_secs(300));
        assert_eq!(p("0"), Duration::ZERO);
        assert_eq!(p("0.5"), Duration::from_millis(500));
        assert_eq!(p("5m"), Duration::from_secs(300));
        assert_eq!(p("1h30m"), Duration::from_secs(5400));
        for bad in ["1mo", "1y", "5x", "1.2.3", "-5", ""] {
            let e = parse_seconds_or_duration(bad).expect_err(bad);
            assert!(e.downcast_ref::<crate::Usage>().is_some(), "{bad}: exit 2");
        }
    }

    #[test]
    fn snapshot_busy_timeout_default_is_the_cores() {
        assert_eq!(
            parse_seconds_or_duration(crate::cmd_basic::DEFAULT_BUSY_TIMEOUT_ARG).expect("default"),
            snapback_core::DEFAULT_BUSY_TIMEOUT
        );
    }
}
