//! Time stamps: RFC 3339 in UTC everywhere.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub use time::OffsetDateTime as Timestamp;

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn format_rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Seconds precision, for names in the mount and listings.
pub fn format_rfc3339_secs(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    format_rfc3339(t)
}

/// Full precision with a fixed nine-digit fraction
/// (`2026-12-01T09:30:42.700000000Z`): names in the mount and listings.
/// Pasted back as `@TIME` it selects exactly this instant (a time cut to
/// the second would select the snapshot before), and names of one width sort
/// by time.
pub fn format_rfc3339_nanos(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// The name a time had when names were cut to the second
/// (`2026-12-01T09:30:42Z`), for names given in that older form.
pub fn strip_fraction(name: &str) -> Option<String> {
    let dot = name.find('.')?;
    let z = dot + name[dot..].find('Z')?;
    Some(format!("{}{}", &name[..dot], &name[z..]))
}

pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        format!("'{s}' is not an RFC 3339 time ({e}); write it like 2026-02-02T17:17:00Z or 2026-02-02T18:17:00+01:00")
    })
}

pub fn from_system(t: std::time::SystemTime) -> Option<OffsetDateTime> {
    Some(OffsetDateTime::from(t))
}

/// How far ahead of this host's clock a snapshot's time may be before it is
/// treated as dated in the future (a clock that was ahead when it was taken).
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(60);

/// True when `t` is more than [`FUTURE_TOLERANCE`] ahead of `now`.
pub fn is_future(t: OffsetDateTime, now: OffsetDateTime) -> bool {
    t - now > time::Duration::try_from(FUTURE_TOLERANCE).unwrap_or(time::Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let t = parse_rfc3339("2026-02-02T18:17:00.5+01:00").expect("parse");
        assert_eq!(format_rfc3339(t), "2026-02-02T17:17:00.5Z");
        assert_eq!(format_rfc3339_secs(t), "2026-02-02T17:17:00Z");
        assert_eq!(format_rfc3339_nanos(t), "2026-02-02T17:17:00.500000000Z");
        assert_eq!(
            parse_rfc3339(&format_rfc3339_nanos(t)).expect("parse back"),
            t
        );
        assert_eq!(
            strip_fraction("2026-02-02T17:17:00.500000000Z_9f2c4e1a").as_deref(),
            Some("2026-02-02T17:17:00Z_9f2c4e1a")
        );
        assert!(parse_rfc3339("yesterday")
            .expect_err("bad")
            .contains("RFC 3339"));
    }
}
