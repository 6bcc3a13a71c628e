//! The replay source: CoinAPI-shaped JSON lines from a file or stdin.
//!
//! Each line is a one-pair body (`{"time":..,"asset_id_base":..,"asset_id_quote":..,"rate":..}`) or a
//! many-quotes body (`{"asset_id_base":..,"rates":[..]}`); blank lines are skipped. A bad line is
//! reported with its line number and counted; the rest go on. With a speed factor the original
//! pacing (by event time) is kept, sped up by that factor; without, lines go as fast as possible.

use chrono::{DateTime, Utc};
use common::RateUpdate;

use crate::sources::rest::client::parse_many_quotes;

/// Parses one line into updates. `received_at` is set to `now` where the line has none.
pub fn parse_line(line: &str, now: DateTime<Utc>) -> Result<Vec<RateUpdate>, String> {
    let trimmed = line.trim();
    let mut updates = if trimmed.contains("\"rates\"") {
        let (updates, bad) = parse_many_quotes(trimmed.as_bytes(), now)?;
        if let Some(e) = bad.first() {
            return Err(e.clone());
        }
        updates
    } else {
        vec![RateUpdate::from_json(trimmed.as_bytes()).map_err(|e| e.to_string())?]
    };
    for u in &mut updates {
        u.received_at
            .get_or_insert(common::model::truncate_to_micros(now));
    }
    Ok(updates)
}

/// Paces a replay: how long to wait before publishing an event with time `t`.
#[derive(Debug)]
pub struct Pacer {
    speed: f64,
    origin: Option<(DateTime<Utc>, std::time::Instant)>,
}

impl Pacer {
    /// `speed` > 0: that many times the original pace; `None`: no waiting.
    pub fn new(speed: Option<f64>) -> Self {
        Pacer {
            speed: speed.unwrap_or(0.0),
            origin: None,
        }
    }

    /// Time left to wait (from `now_wall`) before an event with event time `t` is due.
    pub fn wait_for(
        &mut self,
        t: DateTime<Utc>,
        now_wall: std::time::Instant,
    ) -> std::time::Duration {
        if self.speed <= 0.0 {
            return std::time::Duration::ZERO;
        }
        let (t0, w0) = *self.origin.get_or_insert((t, now_wall));
        let offset = (t - t0).to_std().unwrap_or_default().div_f64(self.speed);
        (w0 + offset).saturating_duration_since(now_wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn parses_both_shapes_and_reports_errors() {
        let now = Utc::now();
        let one = parse_line(r#"{"time":"2024-08-05T13:35:34.3741337Z","asset_id_base":"BTC","asset_id_quote":"USD","rate":61234.56}"#, now).unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].received_at.is_some());
        let many = parse_line(r#"{"asset_id_base":"BTC","rates":[{"time":"2017-08-09T14:31:37.0520000Z","asset_id_quote":"USD","rate":3258.8},{"time":"2017-08-09T14:31:37.0520000Z","asset_id_quote":"EUR","rate":2800.1}]}"#, now).unwrap();
        assert_eq!(many.len(), 2);
        let err = parse_line(
            r#"{"time":"x","asset_id_base":"BTC","asset_id_quote":"USD","rate":1}"#,
            now,
        )
        .unwrap_err();
        assert!(err.contains("time"), "{err}");
        assert!(parse_line("not json", now).is_err());
    }

    #[test]
    fn pacer_keeps_original_spacing_scaled() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let w0 = Instant::now();
        let mut p = Pacer::new(Some(10.0));
        assert_eq!(p.wait_for(t0, w0), Duration::ZERO);
        assert_eq!(
            p.wait_for(t0 + chrono::Duration::seconds(5), w0),
            Duration::from_millis(500)
        );
        // Out-of-order events do not wait.
        assert_eq!(
            p.wait_for(t0 - chrono::Duration::seconds(5), w0),
            Duration::ZERO
        );
        let mut fast = Pacer::new(None);
        assert_eq!(
            fast.wait_for(t0 + chrono::Duration::hours(1), w0),
            Duration::ZERO
        );
    }
}
