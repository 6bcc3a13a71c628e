//! The marks of the incremental compare (`compare_batch_marks`): the ids a run had read up to,
//! when, and fingerprints of the rows at them; which mark the next run reads again from.

use chrono::NaiveDateTime;
use common::window::WindowSpec;
use sqlx::MySqlConnection;

use crate::batch::REREAD_IDS;

/// `raw_coin_data` and `late_events` ids: the high-water marks of a computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ids {
    pub(super) raw: i64,
    pub(super) late: i64,
}

/// The ids a run had read up to, when (database time), and what the rows at those ids were.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct Mark {
    pub(super) taken_at: NaiveDateTime,
    pub(super) raw_id: i64,
    pub(super) late_id: i64,
    pub(super) raw_fp: Option<String>,
    pub(super) late_fp: Option<String>,
}

impl Mark {
    fn ids(&self) -> Ids {
        Ids {
            raw: self.raw_id,
            late: self.late_id,
        }
    }
}

/// Where a run after the marks `newest_first` reads again from: the newest mark taken at least
/// `margin` before the last one, else the last one less `REREAD_IDS` (no marks: from the start).
pub(super) fn reread_from(newest_first: &[Mark], margin: chrono::Duration) -> Ids {
    let Some(last) = newest_first.first() else {
        return Ids { raw: 0, late: 0 };
    };
    match newest_first
        .iter()
        .find(|m| m.taken_at <= last.taken_at - margin)
    {
        Some(m) => m.ids(),
        None => Ids {
            raw: (last.raw_id - REREAD_IDS).max(0),
            late: (last.late_id - REREAD_IDS).max(0),
        },
    }
}

/// The marks older than this are no longer needed once `now` is stored: the next run reads
/// again from the newest mark taken `margin` before `now`, or a newer one.
pub(super) fn prune_before(
    newest_first: &[Mark],
    now: NaiveDateTime,
    margin: chrono::Duration,
) -> Option<NaiveDateTime> {
    newest_first
        .iter()
        .map(|m| m.taken_at)
        .find(|t| *t <= now - margin)
}

/// Whether the stored windows and marks are of the rows there now: the ids have not gone
/// backwards and the rows at the last mark's ids are the ones it saw.
pub(super) async fn consistent(
    conn: &mut MySqlConnection,
    last: &Mark,
    now: &Mark,
) -> anyhow::Result<bool> {
    if last.raw_id > now.raw_id || last.late_id > now.late_id {
        return Ok(false);
    }
    let (raw_fp, late_fp) = fingerprints(conn, last.ids()).await?;
    Ok(raw_fp == last.raw_fp && late_fp == last.late_fp)
}

/// The mark now (the snapshot's: its ids, and the database's clock as it began), and the lowest
/// raw id (how many rows there are, near enough).
pub(super) async fn high_water(conn: &mut MySqlConnection) -> anyhow::Result<(Mark, i64)> {
    let (raw, late, min_raw, taken_at): (Option<i64>, Option<i64>, Option<i64>, NaiveDateTime) =
        sqlx::query_as(
            "SELECT (SELECT MAX(id) FROM raw_coin_data), (SELECT MAX(id) FROM late_events), \
                    (SELECT MIN(id) FROM raw_coin_data), UTC_TIMESTAMP(6)",
        )
        .fetch_one(&mut *conn)
        .await?;
    let ids = Ids {
        raw: raw.unwrap_or(0),
        late: late.unwrap_or(0),
    };
    let (raw_fp, late_fp) = fingerprints(conn, ids).await?;
    let mark = Mark {
        taken_at,
        raw_id: ids.raw,
        late_id: ids.late,
        raw_fp,
        late_fp,
    };
    Ok((mark, min_raw.unwrap_or(0)))
}

/// What the rows at these ids are (hashed): a table emptied and refilled has other rows there.
pub(super) async fn fingerprints(
    conn: &mut MySqlConnection,
    ids: Ids,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let fp: (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT (SELECT SHA1(CONCAT_WS('|', asset_id_base, asset_id_quote, `time`, rate, ingested_at)) \
                 FROM raw_coin_data WHERE id = ?), \
                (SELECT SHA1(CONCAT_WS('|', consumer_group, asset_id_base, asset_id_quote, `time`, recorded_at)) \
                 FROM late_events WHERE id = ?)",
    )
    .bind(ids.raw)
    .bind(ids.late)
    .fetch_one(conn)
    .await?;
    Ok(fp)
}

/// The group's marks for the spec, newest first (a few: older ones are pruned).
pub(super) async fn marks(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
) -> anyhow::Result<Vec<Mark>> {
    Ok(sqlx::query_as(
        "SELECT taken_at, raw_id, late_id, raw_fp, late_fp FROM compare_batch_marks \
         WHERE consumer_group = ? AND window_us = ? AND slide_us = ? ORDER BY taken_at DESC",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .fetch_all(conn)
    .await?)
}

/// Stores the mark `now`, and drops the marks taken before `prune`.
pub(super) async fn add_mark(
    conn: &mut MySqlConnection,
    spec: WindowSpec,
    group: &str,
    now: &Mark,
    prune: Option<NaiveDateTime>,
) -> anyhow::Result<()> {
    if let Some(before) = prune {
        sqlx::query(
            "DELETE FROM compare_batch_marks WHERE consumer_group = ? AND window_us = ? \
             AND slide_us = ? AND taken_at < ?",
        )
        .bind(group)
        .bind(spec.size_us)
        .bind(spec.slide_us)
        .bind(before)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO compare_batch_marks (consumer_group, window_us, slide_us, taken_at, raw_id, \
         late_id, raw_fp, late_fp) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE raw_id = VALUES(raw_id), late_id = VALUES(late_id), \
         raw_fp = VALUES(raw_fp), late_fp = VALUES(late_fp)",
    )
    .bind(group)
    .bind(spec.size_us)
    .bind(spec.slide_us)
    .bind(now.taken_at)
    .bind(now.raw_id)
    .bind(now.late_id)
    .bind(now.raw_fp.as_deref())
    .bind(now.late_fp.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(secs: i64, raw_id: i64) -> Mark {
        Mark {
            taken_at: chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0)
                .unwrap()
                .naive_utc(),
            raw_id,
            late_id: raw_id / 10,
            raw_fp: None,
            late_fp: None,
        }
    }

    #[test]
    fn reads_again_from_the_mark_a_margin_before_the_last_run() {
        let margin = chrono::Duration::seconds(10);
        // Runs at 0, 5, 12 and 14 s: the last at 14, so the newest mark at or before 4 s.
        let marks = [
            mark(14, 900_000),
            mark(12, 800_000),
            mark(5, 500_000),
            mark(0, 100_000),
        ];
        assert_eq!(reread_from(&marks, margin), mark(0, 100_000).ids());
        // However many ids lie between (no cap: a transaction open then may commit now).
        let marks = [mark(30, 5_000_000), mark(20, 100_000)];
        assert_eq!(reread_from(&marks, margin), mark(20, 100_000).ids());
        // No mark that old: the last one less REREAD_IDS, not below 0.
        let marks = [mark(3, 900_000), mark(0, 100_000)];
        assert_eq!(reread_from(&[mark(0, 5)], margin), Ids { raw: 0, late: 0 });
        assert_eq!(reread_from(&[], margin), Ids { raw: 0, late: 0 });
        assert_eq!(
            reread_from(&marks, margin),
            Ids {
                raw: 900_000 - REREAD_IDS,
                late: 90_000 - REREAD_IDS
            }
        );
    }

    #[test]
    fn keeps_the_mark_the_next_run_reads_again_from() {
        let margin = chrono::Duration::seconds(10);
        let marks = [mark(14, 9), mark(12, 8), mark(5, 5), mark(0, 1)];
        // Stored now at 20 s: the next run reads again from the newest mark at or before 10 s.
        let now = mark(20, 10).taken_at;
        let before = prune_before(&marks, now, margin).unwrap();
        assert_eq!(before, mark(5, 5).taken_at);
        let next = [mark(20, 10), mark(14, 9), mark(12, 8), mark(5, 5)];
        assert_eq!(reread_from(&next, margin), mark(5, 5).ids());
        // All within the margin: nothing pruned.
        let recent = [mark(14, 9), mark(12, 8)];
        assert_eq!(prune_before(&recent, mark(20, 10).taken_at, margin), None);
    }
}
