//! Times as the messages and MySQL carry them: parsed tolerantly, written as RFC 3339 UTC or as
//! `DATETIME(6)` literals, kept to the microsecond.

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// Parses CoinAPI times tolerantly: RFC 3339 with any number of fractional digits and any offset
/// (converted to UTC), or a naive `YYYY-MM-DDTHH:MM:SS[.f]` taken as UTC. Kept to microseconds.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let utc = match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
            .ok()?
            .and_utc(),
    };
    Some(truncate_to_micros(utc))
}

/// `2024-08-05T13:35:34.374133Z`: RFC 3339, UTC, microseconds.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Writes `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the same text as [`format_time`], without allocating.
pub(super) fn write_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    write_datetime(out, t, b'T', true);
}

/// Appends `'YYYY-MM-DD HH:MM:SS.ffffff'`, a quoted MySQL `DATETIME(6)` literal (UTC), to `out`.
/// For bulk statements built as text; the output contains only digits and separators.
pub fn push_sql_datetime(out: &mut String, t: DateTime<Utc>) {
    let mut buf = Vec::with_capacity(28);
    buf.push(b'\'');
    write_datetime(&mut buf, t, b' ', false);
    buf.push(b'\'');
    out.push_str(std::str::from_utf8(&buf).expect("ASCII digits and separators"));
}

fn write_datetime(out: &mut Vec<u8>, t: DateTime<Utc>, separator: u8, zulu: bool) {
    fn digits(out: &mut Vec<u8>, mut v: u32, width: usize) {
        let start = out.len();
        out.resize(start + width, b'0');
        for i in (0..width).rev() {
            out[start + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let (date, time) = (t.date_naive(), t.time());
    if !(0..=9999).contains(&date.year()) {
        let text = if zulu {
            format_time(t)
        } else {
            t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
        };
        out.extend_from_slice(text.as_bytes());
        return;
    }
    digits(out, date.year() as u32, 4);
    out.push(b'-');
    digits(out, date.month(), 2);
    out.push(b'-');
    digits(out, date.day(), 2);
    out.push(separator);
    digits(out, time.hour(), 2);
    out.push(b':');
    digits(out, time.minute(), 2);
    out.push(b':');
    // A leap second is carried in the nanoseconds (>= 1e9); RFC 3339 shows it as second 60.
    let nanos = time.nanosecond();
    digits(out, time.second() + nanos / 1_000_000_000, 2);
    out.push(b'.');
    digits(out, (nanos % 1_000_000_000) / 1_000, 6);
    if zulu {
        out.push(b'Z');
    }
}

/// Drops sub-microsecond digits (CoinAPI sends 100 ns; MySQL keeps 1 µs).
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.nanosecond();
    t.with_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}
