//! Windows: the validated [`WindowSpec`] shared by the stream aggregator and compare, and a window
//! result as published on topic `aggregated_data` by the stream aggregator, in the
//! original Spark job's JSON shape plus `is_final`, `first_rate` and `last_rate`:
//! `{"window":{"start":"..","end":".."},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":30,
//!   "avg_rate":..,"min_rate":..,"max_rate":..,"sum_rate":..,"first_rate":..,"last_rate":..,"is_final":false}`

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    config::ConfigError,
    model::{format_time, parse_time, AssetId, ModelError},
};

/// Window size and slide in microseconds: windows `[start, start + size)` with starts at every
/// multiple of `slide` since the epoch (UTC). Tumbling windows have `slide == size`.
///
/// Constructed only through [`WindowSpec::from_settings`] (checked: size at least 1 ms, slide
/// positive, at most the size and dividing it) or the infallible [`WindowSpec::tumbling`] /
/// [`WindowSpec::sliding`] for values known to be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowSpec {
    pub size_us: i64,
    pub slide_us: i64,
}

impl WindowSpec {
    /// The spec from the `WINDOW` and `SLIDE` settings (no slide: tumbling); a bad value is a
    /// [`ConfigError`] naming the setting.
    pub fn from_settings(window: Duration, slide: Option<Duration>) -> Result<Self, ConfigError> {
        let size = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        if size < 1_000 {
            return Err(ConfigError::new("WINDOW", "must be at least 1ms"));
        }
        let slide = slide.map_or(size, |s| i64::try_from(s.as_micros()).unwrap_or(i64::MAX));
        Self::checked(size, slide)
    }

    /// The spec from microseconds (a recorded spec), checked like [`WindowSpec::from_settings`].
    pub fn checked(size_us: i64, slide_us: i64) -> Result<Self, ConfigError> {
        if size_us <= 0 {
            return Err(ConfigError::new("WINDOW", "must be positive"));
        }
        if slide_us <= 0 || slide_us > size_us || size_us % slide_us != 0 {
            return Err(ConfigError::new(
                "SLIDE",
                "must be positive, at most WINDOW, and divide WINDOW",
            ));
        }
        Ok(WindowSpec { size_us, slide_us })
    }

    /// Tumbling windows of `size_us` (positive).
    pub fn tumbling(size_us: i64) -> Self {
        Self::sliding(size_us, size_us)
    }

    /// Windows of `size_us` starting every `slide_us`; panics unless `0 < slide <= size` and
    /// `slide` divides `size` (use [`WindowSpec::checked`] for values from outside).
    pub fn sliding(size_us: i64, slide_us: i64) -> Self {
        Self::checked(size_us, slide_us).expect("0 < slide <= size, slide divides size")
    }

    /// Windows each event belongs to.
    pub fn windows_per_event(&self) -> i64 {
        self.size_us / self.slide_us
    }

    /// Starts of the windows covering `t`, latest first.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let last = t.div_euclid(self.slide_us) * self.slide_us;
        (0..)
            .map(move |k| last - k * self.slide_us)
            .take_while(move |s| s + self.size_us > t)
    }

    /// End of the latest window covering `t`.
    pub fn last_end(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_us) * self.slide_us + self.size_us
    }

    /// End of the earliest window covering `t`.
    pub fn first_end(&self, t: i64) -> i64 {
        self.last_end(t) - self.size_us + self.slide_us
    }

    /// The spec as written in settings: `1m`, `1h/1m`.
    pub fn label(&self) -> String {
        let size = humantime::format_duration(Duration::from_micros(self.size_us as u64));
        if self.slide_us == self.size_us {
            size.to_string()
        } else {
            let slide = humantime::format_duration(Duration::from_micros(self.slide_us as u64));
            format!("{size}/{slide}")
        }
    }
}

impl std::fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// Parses the `WINDOWS` setting: `SPEC[,SPEC...]`, each `SIZE` (tumbling) or `SIZE/SLIDE`
/// (`1m,5m,1h/1m`); sorted, without repeats. A bad value names the setting.
pub fn parse_specs(text: &str) -> Result<Vec<WindowSpec>, ConfigError> {
    let bad = |reason: String| ConfigError::new("WINDOWS", reason);
    let mut specs = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad(format!("empty spec in {text:?}")));
        }
        let (size, slide) = match part.split_once('/') {
            Some((a, b)) => (a.trim(), Some(b.trim())),
            None => (part, None),
        };
        let duration = |s: &str| {
            humantime::parse_duration(s).map_err(|e| bad(format!("{part:?}: {s:?}: {e}")))
        };
        let slide = slide.map(duration).transpose()?;
        let spec = WindowSpec::from_settings(duration(size)?, slide)
            .map_err(|e| bad(format!("{part:?}: {}", e.reason)))?;
        specs.push(spec);
    }
    specs.sort();
    specs.dedup();
    Ok(specs)
}

/// `[start, end)` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowBounds {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// One emission of a window's aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub window: WindowBounds,
    pub base: AssetId,
    pub quote: AssetId,
    pub update_count: u64,
    pub avg_rate: f64,
    pub min_rate: f64,
    pub max_rate: f64,
    pub sum_rate: f64,
    pub first_rate: f64,
    pub last_rate: f64,
    /// Event time of the window's latest event (absent in the original Spark messages).
    pub last_event_time: Option<DateTime<Utc>>,
    /// The watermark passed the window's end: this is the window's last emission.
    pub is_final: bool,
    /// The aggregator group that computed it (empty in messages from before groups were
    /// recorded); shared, as every result of a run has the same.
    pub group: std::sync::Arc<str>,
    /// The window spec it belongs to (for messages without one: tumbling, its bounds' length).
    pub spec: WindowSpec,
    /// 0 until the window's first final emission; 1, 2, ... for each final emission again
    /// within the allowed lateness (an update admitted after the window closed).
    pub revision: u32,
}

#[derive(Serialize, Deserialize)]
struct WireWindow {
    start: String,
    end: String,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    window: WireWindow,
    asset_id_base: String,
    asset_id_quote: String,
    update_count: u64,
    avg_rate: f64,
    min_rate: f64,
    max_rate: f64,
    sum_rate: f64,
    #[serde(default)]
    first_rate: Option<f64>,
    #[serde(default)]
    last_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_event_time: Option<String>,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    consumer_group: String,
    #[serde(default)]
    window_us: Option<i64>,
    #[serde(default)]
    slide_us: Option<i64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    revision: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl WindowResult {
    pub fn to_json(&self) -> String {
        let wire = Wire {
            window: WireWindow {
                start: format_time(self.window.start),
                end: format_time(self.window.end),
            },
            asset_id_base: self.base.to_string(),
            asset_id_quote: self.quote.to_string(),
            update_count: self.update_count,
            avg_rate: self.avg_rate,
            min_rate: self.min_rate,
            max_rate: self.max_rate,
            sum_rate: self.sum_rate,
            first_rate: Some(self.first_rate),
            last_rate: Some(self.last_rate),
            last_event_time: self.last_event_time.map(format_time),
            is_final: self.is_final,
            consumer_group: self.group.to_string(),
            window_us: Some(self.spec.size_us),
            slide_us: Some(self.spec.slide_us),
            revision: self.revision,
        };
        serde_json::to_string(&wire).expect("a window result always serializes")
    }

    /// Parses one `aggregated_data` message. Messages of the original Spark job (no
    /// `first_rate`/`last_rate`/`is_final`) are accepted; those fields default to 0/0/false.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let wire: Wire = match serde_json::from_slice(bytes) {
            Ok(w) => w,
            Err(_) => return Err(crate::model::json_error_with_path::<Wire>(bytes)),
        };
        let time = |field: &'static str, s: &str| {
            parse_time(s).ok_or_else(|| ModelError::InvalidField {
                field,
                value: s.chars().take(64).collect(),
                reason: "not an RFC 3339 UTC timestamp",
            })
        };
        let window = WindowBounds {
            start: time("window.start", &wire.window.start)?,
            end: time("window.end", &wire.window.end)?,
        };
        if window.end <= window.start {
            return Err(ModelError::InvalidField {
                field: "window.end",
                value: wire.window.end,
                reason: "must be after window.start",
            });
        }
        for (field, t, text) in [
            ("window.start", window.start, &wire.window.start),
            ("window.end", window.end, &wire.window.end),
        ] {
            if !crate::model::time_in_range(t.timestamp_micros()) {
                return Err(ModelError::InvalidField {
                    field,
                    value: text.chars().take(64).collect(),
                    reason: "outside the accepted range 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z",
                });
            }
        }
        if i64::try_from(wire.update_count).is_err() {
            return Err(ModelError::InvalidField {
                field: "update_count",
                value: wire.update_count.to_string(),
                reason: "larger than a BIGINT",
            });
        }
        let length = (window.end - window.start)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        let size = wire.window_us.unwrap_or(length);
        let spec = WindowSpec::checked(size, wire.slide_us.unwrap_or(size))
            .ok()
            .filter(|s| s.size_us == length)
            .ok_or_else(|| ModelError::InvalidField {
                field: "window_us",
                value: format!("{:?}/{:?}", wire.window_us, wire.slide_us),
                reason: "window_us must be the window's length and slide_us divide it",
            })?;
        Ok(WindowResult {
            window,
            base: AssetId::parse_field(&wire.asset_id_base, "asset_id_base")?,
            quote: AssetId::parse_field(&wire.asset_id_quote, "asset_id_quote")?,
            update_count: wire.update_count,
            avg_rate: wire.avg_rate,
            min_rate: wire.min_rate,
            max_rate: wire.max_rate,
            sum_rate: wire.sum_rate,
            first_rate: wire.first_rate.unwrap_or(0.0),
            last_rate: wire.last_rate.unwrap_or(0.0),
            last_event_time: match wire.last_event_time.as_deref() {
                Some(t) => Some(time("last_event_time", t)?),
                None => None,
            },
            is_final: wire.is_final,
            group: wire.consumer_group.into(),
            spec,
            revision: wire.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_and_name_the_setting() {
        let s = |ms| Duration::from_millis(ms);
        assert_eq!(
            WindowSpec::from_settings(s(60_000), None).unwrap(),
            WindowSpec::tumbling(60_000_000)
        );
        assert_eq!(
            WindowSpec::from_settings(s(60_000), Some(s(20_000)))
                .unwrap()
                .windows_per_event(),
            3
        );
        assert_eq!(
            WindowSpec::from_settings(s(0), None).unwrap_err().setting,
            "WINDOW"
        );
        for slide in [0, 70_000, 25_000] {
            let e = WindowSpec::from_settings(s(60_000), Some(s(slide))).unwrap_err();
            assert_eq!(e.setting, "SLIDE", "slide {slide}");
        }
        assert!(WindowSpec::checked(10, 0).is_err());
    }

    #[test]
    fn starts_cover_the_event() {
        let spec = WindowSpec::sliding(10, 5);
        assert_eq!(spec.starts(12).collect::<Vec<_>>(), vec![10, 5]);
        assert_eq!(spec.starts(-3).collect::<Vec<_>>(), vec![-5, -10]);
        assert_eq!(spec.last_end(12), 20);
    }

    #[test]
    fn round_trips_and_reads_the_original_shape() {
        let original = br#"{"window":{"start":"2024-08-05T13:35:00.000Z","end":"2024-08-05T13:40:00.000Z"},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":30,"avg_rate":2.0,"min_rate":1.0,"max_rate":3.0,"sum_rate":60.0}"#;
        let w = WindowResult::from_json(original).unwrap();
        assert_eq!(w.update_count, 30);
        assert!(!w.is_final);
        let mut f = w.clone();
        f.is_final = true;
        f.first_rate = 1.5;
        f.last_event_time = Some(f.window.start);
        assert_eq!(WindowResult::from_json(f.to_json().as_bytes()).unwrap(), f);
        // Messages without a spec are tumbling windows of their length, of no recorded group.
        assert_eq!(w.spec, WindowSpec::tumbling(5 * 60_000_000));
        assert_eq!(&*w.group, "");
        f.group = "g1".into();
        f.spec = WindowSpec::sliding(5 * 60_000_000, 60_000_000);
        assert_eq!(WindowResult::from_json(f.to_json().as_bytes()).unwrap(), f);
        let wrong = f
            .to_json()
            .replace("\"window_us\":300000000", "\"window_us\":60000000");
        let e = WindowResult::from_json(wrong.as_bytes()).unwrap_err();
        assert_eq!(e.field(), Some("window_us"));
    }

    #[test]
    fn window_specs_parse_sorted_and_name_the_setting() {
        let specs = parse_specs("1h/1m, 1m,5m,1m").unwrap();
        let m = 60_000_000;
        assert_eq!(
            specs,
            vec![
                WindowSpec::tumbling(m),
                WindowSpec::tumbling(5 * m),
                WindowSpec::sliding(60 * m, m)
            ]
        );
        assert_eq!(specs[2].label(), "1h/1m");
        assert_eq!(specs[0].to_string(), "1m");
        for bad in ["", "1m,", "1x", "1m/7s", "1m/2m", "0s"] {
            assert_eq!(parse_specs(bad).unwrap_err().setting, "WINDOWS", "{bad}");
        }
    }

    #[test]
    fn bad_messages_name_the_field() {
        let e = WindowResult::from_json(br#"{"window":{"start":"x","end":"2024-08-05T13:40:00Z"},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":1,"avg_rate":1,"min_rate":1,"max_rate":1,"sum_rate":1}"#).unwrap_err();
        assert_eq!(e.field(), Some("window.start"));
        let e = WindowResult::from_json(br#"{"window":{"start":"2024-08-05T13:35:00Z","end":"2024-08-05T13:40:00Z"},"asset_id_base":"BTC","asset_id_quote":"USD","update_count":-1,"avg_rate":1,"min_rate":1,"max_rate":1,"sum_rate":1}"#).unwrap_err();
        assert_eq!(e.field(), Some("update_count"), "{e}");
    }
}
