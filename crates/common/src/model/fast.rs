//! The hot path of [`RateUpdate::from_json`](super::RateUpdate::from_json): a parser for exactly
//! the message shape our producer writes ([`RateUpdate::write_json`](super::RateUpdate::write_json)):
//!
//! `{"time":"<T>","asset_id_base":"<ID>","asset_id_quote":"<ID>","rate":<NUMBER>[,"received_at":"<T>"]}`
//!
//! with no whitespace, `<T>` = `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, `<ID>` = 1 to 16 of `A-Z 0-9 _ -`
//! and a positive finite JSON number. Anything else (another field order, whitespace, escapes,
//! offsets, lower-case ids, invalid values) returns `None` and the caller falls back to the full
//! serde parser, which also produces the error. So this can only ever be faster, never different:
//! the property tests check that whatever it accepts, serde parses to the same value.

use arrayvec::ArrayString;

use super::{AssetId, Pair, RateEvent, MAX_ASSET_ID_LEN};

/// Parses the canonical shape, or `None` for anything else.
pub(super) fn parse(b: &[u8]) -> Option<RateEvent> {
    let mut c = Cursor { b, i: 0 };
    c.literal(b"{\"time\":\"")?;
    let time = c.time()?;
    c.literal(b"\",\"asset_id_base\":\"")?;
    let base = c.asset_id()?;
    c.literal(b"\",\"asset_id_quote\":\"")?;
    let quote = c.asset_id()?;
    c.literal(b"\",\"rate\":")?;
    let rate = c.number()?;
    let received_at = if c.peek() == Some(b',') {
        c.literal(b",\"received_at\":\"")?;
        let t = c.time()?;
        c.literal(b"\"")?;
        Some(t)
    } else {
        None
    };
    c.literal(b"}")?;
    // Out of range: the general parser gives the error.
    if c.i != b.len()
        || !super::rate_in_range(rate)
        || !super::time_in_range(time)
        || received_at.is_some_and(|r| !super::time_in_range(r))
    {
        return None;
    }
    Some(RateEvent {
        time_us: time,
        pair: Pair { base, quote },
        rate,
        received_us: received_at,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.i + lit.len();
        (self.b.get(self.i..end)? == lit).then(|| self.i = end)
    }

    /// `n` ASCII digits as a number.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.i..self.i + n)?;
        let mut v = 0u32;
        for &d in s {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(d - b'0');
        }
        self.i += n;
        Some(v)
    }

    fn asset_id(&mut self) -> Option<AssetId> {
        let start = self.i;
        while let Some(&ch) = self.b.get(self.i) {
            if ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == b'_' || ch == b'-' {
                self.i += 1;
            } else {
                break;
            }
        }
        let len = self.i - start;
        if len == 0 || len > MAX_ASSET_ID_LEN {
            return None;
        }
        // Only ASCII was accepted above.
        let s = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        Some(AssetId(ArrayString::from(s).ok()?))
    }

    /// A JSON number (RFC 8259 grammar), parsed with correct rounding. Plain decimals whose
    /// digits fit in 53 bits take Clinger's exact fast path (an exact integer divided by an
    /// exact power of ten rounds once, correctly); everything else goes to the standard parser.
    fn number(&mut self) -> Option<f64> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let mut mantissa = 0u64;
        let mut digits = 0u32;
        let mut scan = |c: &mut Self| {
            let s = c.i;
            while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                digits += 1;
                c.i += 1;
            }
            c.i - s
        };
        match self.peek()? {
            b'0' => {
                self.i += 1;
            }
            b'1'..=b'9' => {
                scan(self);
            }
            _ => return None,
        }
        let mut fraction = 0;
        if self.peek() == Some(b'.') {
            self.i += 1;
            fraction = scan(self);
            if fraction == 0 {
                return None;
            }
        }
        let mut exponent = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            exponent = true;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            let s = self.i;
            while self.peek().is_some_and(|d| d.is_ascii_digit()) {
                self.i += 1;
            }
            if self.i == s {
                return None;
            }
        }
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        if !exponent && digits <= 19 && mantissa < (1 << 53) && fraction < POW10.len() {
            let v = mantissa as f64 / POW10[fraction];
            return Some(if negative { -v } else { v });
        }
        // The grammar above admits only ASCII.
        std::str::from_utf8(&self.b[start..self.i])
            .ok()?
            .parse()
            .ok()
    }

    /// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` as microseconds since the epoch (truncated).
    fn time(&mut self) -> Option<i64> {
        let year = self.digits(4)?;
        self.literal(b"-")?;
        let month = self.digits(2)?;
        self.literal(b"-")?;
        let day = self.digits(2)?;
        self.literal(b"T")?;
        let hour = self.digits(2)?;
        self.literal(b":")?;
        let minute = self.digits(2)?;
        self.literal(b":")?;
        let second = self.digits(2)?;
        let mut micros = 0u32;
        if self.peek() == Some(b'.') {
            self.i += 1;
            let mut n = 0;
            while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
                if n < 6 {
                    micros = micros * 10 + u32::from(d - b'0');
                }
                n += 1;
                self.i += 1;
            }
            if n == 0 || n > 9 {
                return None;
            }
            for _ in n..6 {
                micros *= 10;
            }
        }
        self.literal(b"Z")?;
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
        Some(secs * 1_000_000 + i64::from(micros))
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date of years 0 to 9999 (Howard Hinnant's
/// algorithm, shifted by 400 years so every step is unsigned).
fn days_from_civil(y: u32, m: u32, d: u32) -> i64 {
    let y = y + 400 - u32::from(m <= 2);
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i64::from(era * 146_097 + doe) - 146_097 - 719_468
}

#[cfg(test)]
mod tests {
    use super::super::{ModelError, RateUpdate};
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use proptest::prelude::*;

    fn slow(b: &[u8]) -> Result<RateUpdate, ModelError> {
        RateUpdate::from_json_slow(b)
    }

    fn fast(b: &[u8]) -> Option<RateUpdate> {
        parse(b).map(|e| e.to_update().unwrap())
    }

    #[test]
    fn parses_the_producers_shape() {
        let b = br#"{"time":"2024-08-05T13:35:34.3741337Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":61234.56,"received_at":"2024-08-05T13:35:35.000001Z"}"#;
        let u = fast(b).unwrap();
        assert_eq!(u.rate, 61234.56);
        assert_eq!(u.pair.to_string(), "BTC/USD");
        assert_eq!(
            u.time,
            Utc.with_ymd_and_hms(2024, 8, 5, 13, 35, 34).unwrap()
                + chrono::Duration::microseconds(374_133)
        );
        assert_eq!(Some(u), slow(b).ok());
    }

    #[test]
    fn leaves_everything_else_to_serde() {
        for b in [
            &br#"{ "time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#[..],
            br#"{"time":"2024-08-05T13:35:34+00:00","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#,
            br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"btc","asset_id_quote":"USD","rate":1}"#,
            br#"{"time":"2024-02-30T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#,
            br#"{"time":"2024-08-05T13:35:60Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#,
            br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":0}"#,
            br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":01}"#,
            br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1.}"#,
            br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1e999}"#,
            br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}x"#,
            br#"{"time":"2024-08-05T13:35:34.1234567890Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#,
            br#"{"asset_id_base":"BTC","time":"2024-08-05T13:35:34Z","asset_id_quote":"USD","rate":1}"#,
        ] {
            assert_eq!(parse(b), None, "{}", String::from_utf8_lossy(b));
        }
    }

    fn asset() -> impl Strategy<Value = AssetId> {
        "[A-Z0-9_-]{1,16}".prop_map(|s| AssetId::parse_field(&s, "x").unwrap())
    }

    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        // The accepted range: 1970 to the end of 9999.
        (super::super::MIN_TIME_US..=super::super::MAX_TIME_US)
            .prop_map(|us| DateTime::from_timestamp_micros(us).unwrap())
    }

    fn rate() -> impl Strategy<Value = f64> {
        prop_oneof![
            (1e-12f64..1e12),
            any::<f64>().prop_filter("accepted", |r| super::super::rate_in_range(*r)),
            Just(f64::MIN_POSITIVE),
            Just(super::super::MAX_RATE),
        ]
    }

    fn out_of_range_rate() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(5e-324),
            Just(f64::MAX),
            Just(1.7e308),
            (1.000_001e18f64..f64::MAX),
            (0.0f64..f64::MIN_POSITIVE),
        ]
    }

    #[test]
    fn values_outside_the_accepted_range_are_refused_naming_the_field() {
        let body = |time: &str, rate: &str| {
            format!(
                r#"{{"time":"{time}","asset_id_base":"BTC","asset_id_quote":"USD","rate":{rate}}}"#
            )
        };
        for (time, rate, field) in [
            ("2024-08-05T13:35:34Z", "1.7e308", "rate"),
            ("2024-08-05T13:35:34Z", "1e19", "rate"),
            ("2024-08-05T13:35:34Z", "5e-324", "rate"),
            ("1969-12-31T23:59:59Z", "1", "time"),
            ("0000-01-01T00:00:00Z", "1", "time"),
            ("9999-12-31T23:00:00-05:00", "1", "time"),
        ] {
            let b = body(time, rate);
            assert_eq!(parse(b.as_bytes()), None, "{b}");
            let err = slow(b.as_bytes()).unwrap_err();
            assert_eq!(err.field(), Some(field), "{b}: {err}");
            assert!(matches!(err, ModelError::InvalidField { .. }), "{err:?}");
        }
        let u = slow(body("2024-08-05T13:35:34Z", "1e18").as_bytes()).unwrap();
        assert_eq!(u.rate, 1e18);
    }

    #[test]
    fn an_event_time_far_ahead_of_its_publication_is_refused() {
        let b = br#"{"time":"2024-08-05T13:35:34Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#;
        let e = super::super::RateEvent::from_json(b).unwrap();
        let at_ms = e.time_us / 1000;
        assert!(e.check_published(Some(at_ms)).is_ok());
        assert!(
            e.check_published(Some(at_ms - 5 * 60 * 1000)).is_ok(),
            "5 minutes ahead is still accepted"
        );
        let err = e
            .check_published(Some(at_ms - 5 * 60 * 1000 - 1))
            .unwrap_err();
        assert_eq!(err.field(), Some("time"));
        assert!(err.to_string().contains("published"), "{err}");
        assert!(
            e.check_published(None).is_ok(),
            "a past time against the wall clock"
        );
    }

    proptest! {
        #[test]
        fn agrees_with_serde_on_what_the_producer_writes(
            time in time(), base in asset(), quote in asset(), rate in rate(),
            received in proptest::option::of(time()),
        ) {
            let u = RateUpdate { time, pair: Pair { base, quote }, rate, received_at: received };
            let json = u.to_json();
            prop_assert_eq!(fast(json.as_bytes()), Some(u));
            prop_assert_eq!(slow(json.as_bytes()), Ok(u));
        }

        #[test]
        fn both_parsers_refuse_rates_out_of_range(time in time(), rate in out_of_range_rate()) {
            let u = RateUpdate { time, pair: "BTC/USD".parse().unwrap(), rate, received_at: None };
            let json = u.to_json();
            prop_assert_eq!(fast(json.as_bytes()), None);
            let err = slow(json.as_bytes()).unwrap_err();
            prop_assert_eq!(err.field(), Some("rate"));
        }

        #[test]
        fn accepts_only_what_serde_parses_the_same(
            time in time(), base in asset(), quote in asset(), rate in rate(),
            fraction in "(\\.[0-9]{0,10})?",
            pos in any::<prop::sample::Index>(), byte in any::<u8>(), delete in any::<bool>(),
        ) {
            let t = time.format("%Y-%m-%dT%H:%M:%S");
            let mut json = format!(
                r#"{{"time":"{t}{fraction}Z","asset_id_base":"{base}","asset_id_quote":"{quote}","rate":{rate}}}"#
            ).into_bytes();
            if let Some(f) = fast(&json) {
                prop_assert_eq!(slow(&json), Ok(f));
            }
            let i = pos.index(json.len());
            if delete { json.remove(i); } else { json[i] = byte; }
            if let Some(f) = fast(&json) {
                prop_assert_eq!(slow(&json), Ok(f));
            }
        }
    }
}
