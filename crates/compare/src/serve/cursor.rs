//! The poller's cursor over a table's ids (`raw_coin_data`, `late_events`): ids are taken in one
//! order and committed in another, so each tick reads again from what had been seen
//! [`MARGIN`] ago (at most [`batch::REREAD_IDS`] back), and reports each id once.

use std::{
    collections::{BTreeSet, VecDeque},
    time::Instant,
};

use crate::batch::{self, REREAD_MARGIN as MARGIN};

/// Ids read so far, with what was read within the margin.
#[derive(Debug, Default)]
pub(super) struct IdCursor {
    seen: i64,
    recent: BTreeSet<i64>,
    /// (when, `seen` then): the floor to read again from is `seen` as of [`MARGIN`] ago.
    history: VecDeque<(Instant, i64)>,
    floor: i64,
}

impl IdCursor {
    pub(super) fn start(seen: i64) -> Self {
        IdCursor {
            seen,
            floor: seen,
            ..Default::default()
        }
    }

    /// Where this tick reads from.
    pub(super) fn from(&mut self, now: Instant) -> i64 {
        while let Some((t, s)) = self.history.front() {
            if now.duration_since(*t) < MARGIN {
                break;
            }
            self.floor = *s;
            self.history.pop_front();
        }
        // At most this many (a bulk load does not make every tick read it all again).
        self.floor = self.floor.max(self.seen - batch::REREAD_IDS);
        let floor = self.floor;
        self.recent = self.recent.split_off(&(floor + 1));
        floor
    }

    /// How many rows above `from` were read before (read again in this tick).
    pub(super) fn reread(&self, from: i64) -> i64 {
        self.recent.range(from + 1..).count() as i64
    }

    /// Whether `id` is new (not read before), recording it.
    pub(super) fn fresh(&mut self, id: i64) -> bool {
        self.seen = self.seen.max(id);
        self.recent.insert(id)
    }

    pub(super) fn tick_done(&mut self, now: Instant) {
        self.history.push_back((now, self.seen));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_id_cursor_reads_a_margin_again_and_reports_each_id_once() {
        let t0 = Instant::now();
        let mut c = IdCursor::start(100);
        assert_eq!(c.from(t0), 100);
        assert!(c.fresh(102) && !c.fresh(102));
        c.tick_done(t0);
        // Within the margin the floor stays: 101 commits late and is still found.
        assert_eq!(c.from(t0 + Duration::from_secs(1)), 100);
        assert!(c.fresh(101) && !c.fresh(102));
        c.tick_done(t0 + Duration::from_secs(1));
        // After the margin the floor moves up to what had been seen then.
        assert_eq!(c.from(t0 + MARGIN + Duration::from_secs(1)), 102);
        // A bulk load does not make every tick read it all again.
        assert!(c.fresh(1_000_000));
        c.tick_done(t0 + MARGIN + Duration::from_secs(2));
        assert_eq!(
            c.from(t0 + MARGIN + Duration::from_secs(3)),
            1_000_000 - batch::REREAD_IDS
        );
    }
}
