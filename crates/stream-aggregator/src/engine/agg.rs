//! The aggregates of a set of updates ([`Agg`]): count, sum (compensated, so the order in which
//! slices are combined does not change it beyond rounding of the last bit), min, max, and the
//! first and last rate by event time. Combining is associative and commutative, so a window can be
//! assembled from its slices in any grouping ([`Window`], a two-stack sliding aggregation).

use serde::{Deserialize, Serialize};

/// An [`Agg`] as stored: `(count, sum, comp, min, max, first_time, first_rate, last_time,
/// last_rate)`, a JSON array (the state holds many).
pub type Row = (u64, f64, f64, f64, f64, i64, f64, i64, f64);

/// Aggregates of one (pair, window) or (pair, slice).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    pub count: u64,
    /// The running sum; [`Agg::sum`] adds the compensation.
    pub sum: f64,
    /// Neumaier compensation: the low-order part lost from `sum`.
    #[serde(default)]
    pub comp: f64,
    pub min: f64,
    pub max: f64,
    pub first_time: i64,
    pub first_rate: f64,
    pub last_time: i64,
    pub last_rate: f64,
}

impl Agg {
    /// Aggregates of nothing: the identity of [`Agg::merge`].
    pub const EMPTY: Agg = Agg {
        count: 0,
        sum: 0.0,
        comp: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        first_time: i64::MAX,
        first_rate: 0.0,
        last_time: i64::MIN,
        last_rate: 0.0,
    };

    pub fn new(time: i64, rate: f64) -> Self {
        Agg {
            count: 1,
            sum: rate,
            comp: 0.0,
            min: rate,
            max: rate,
            first_time: time,
            first_rate: rate,
            last_time: time,
            last_rate: rate,
        }
    }

    /// Adds one update.
    #[inline]
    pub fn add(&mut self, time: i64, rate: f64) {
        self.count += 1;
        self.add_sum(rate, 0.0);
        self.min = self.min.min(rate);
        self.max = self.max.max(rate);
        if time < self.first_time {
            self.first_time = time;
            self.first_rate = rate;
        }
        if time > self.last_time {
            self.last_time = time;
            self.last_rate = rate;
        }
    }

    /// Neumaier's compensated addition of `x` (and a compensation `c` carried along).
    #[inline]
    fn add_sum(&mut self, x: f64, c: f64) {
        let t = self.sum + x;
        self.comp += if self.sum.abs() >= x.abs() {
            (self.sum - t) + x
        } else {
            (x - t) + self.sum
        } + c;
        self.sum = t;
    }

    /// Both sets of updates together.
    #[must_use]
    pub fn merge(mut self, other: &Agg) -> Agg {
        if other.count == 0 {
            return self;
        }
        if self.count == 0 {
            return *other;
        }
        self.count += other.count;
        self.add_sum(other.sum, other.comp);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.first_time < self.first_time {
            self.first_time = other.first_time;
            self.first_rate = other.first_rate;
        }
        if other.last_time > self.last_time {
            self.last_time = other.last_time;
            self.last_rate = other.last_rate;
        }
        self
    }

    pub fn row(&self) -> Row {
        let a = self;
        (
            a.count,
            a.sum,
            a.comp,
            a.min,
            a.max,
            a.first_time,
            a.first_rate,
            a.last_time,
            a.last_rate,
        )
    }

    pub fn from_row(r: &Row) -> Self {
        Agg {
            count: r.0,
            sum: r.1,
            comp: r.2,
            min: r.3,
            max: r.4,
            first_time: r.5,
            first_rate: r.6,
            last_time: r.7,
            last_rate: r.8,
        }
    }

    /// The sum of the rates.
    pub fn total(&self) -> f64 {
        self.sum + self.comp
    }

    pub fn avg(&self) -> f64 {
        self.total() / self.count as f64
    }
}

/// The aggregate of a window sliding forward over slices: slices enter at the newest end and
/// leave at the oldest; each slice is combined O(1) times amortized (two stacks: the oldest
/// slices with suffix aggregates, the newest with one running aggregate).
#[derive(Debug, Default)]
pub struct Window {
    /// Oldest last; each entry's aggregate covers it and every newer entry of this stack.
    front: Vec<(i64, Agg)>,
    /// Newest last, in arrival order.
    back: Vec<(i64, Agg)>,
    back_agg: Option<Agg>,
}

impl Window {
    /// Adds the slice starting at `start` (newer than all held).
    pub fn push(&mut self, start: i64, agg: Agg) {
        self.back.push((start, agg));
        self.back_agg = Some(self.back_agg.unwrap_or(Agg::EMPTY).merge(&agg));
    }

    /// Drops the slices starting before `start`.
    pub fn drop_before(&mut self, start: i64) {
        loop {
            if self.front.is_empty() {
                if self.back.first().is_none_or(|(s, _)| *s >= start) {
                    return;
                }
                self.flip();
            }
            match self.front.last() {
                Some((s, _)) if *s < start => {
                    self.front.pop();
                }
                _ => return,
            }
        }
    }

    /// Moves the newest stack onto the oldest, computing suffix aggregates.
    fn flip(&mut self) {
        let mut acc = Agg::EMPTY;
        for (s, a) in self.back.drain(..).rev() {
            acc = a.merge(&acc);
            self.front.push((s, acc));
        }
        self.back_agg = None;
    }

    /// The aggregate of the slices held.
    pub fn agg(&self) -> Agg {
        let front = self.front.last().map_or(Agg::EMPTY, |(_, a)| *a);
        front.merge(&self.back_agg.unwrap_or(Agg::EMPTY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_the_aggregate_of_both() {
        let mut a = Agg::new(5, 2.0);
        a.add(1, 4.0);
        let mut b = Agg::new(9, 1.0);
        b.add(3, 8.0);
        let m = a.merge(&b);
        assert_eq!((m.count, m.total(), m.min, m.max), (4, 15.0, 1.0, 8.0));
        assert_eq!((m.first_time, m.first_rate), (1, 4.0));
        assert_eq!((m.last_time, m.last_rate), (9, 1.0));
        assert_eq!(Agg::EMPTY.merge(&m), m);
        assert_eq!(m.merge(&Agg::EMPTY), m);
    }

    #[test]
    fn compensated_sums_do_not_depend_on_grouping() {
        let rates = [1e16, 1.0, -1e16, 3.0, 0.1, 0.2];
        let mut one = Agg::EMPTY;
        for (i, r) in rates.iter().enumerate() {
            one = one.merge(&Agg::new(i as i64, *r));
        }
        let mut left = Agg::new(0, rates[0]);
        left.add(1, rates[1]);
        let mut right = Agg::new(2, rates[2]);
        for (i, r) in rates.iter().enumerate().skip(3) {
            right.add(i as i64, *r);
        }
        assert_eq!(one.total(), left.merge(&right).total());
        assert!((one.total() - 4.3).abs() < 1e-12, "{}", one.total());
    }

    #[test]
    fn sliding_window_matches_a_direct_merge() {
        let slices: Vec<(i64, Agg)> = (0..50)
            .map(|i| (i * 10, Agg::new(i * 10, (i * 7 % 13) as f64)))
            .collect();
        let mut w = Window::default();
        let mut next = 0;
        for start in (0..500).step_by(20) {
            let end = start + 60;
            while next < slices.len() && slices[next].0 < end {
                w.push(slices[next].0, slices[next].1);
                next += 1;
            }
            w.drop_before(start);
            let direct = slices
                .iter()
                .filter(|(s, _)| (start..end).contains(s))
                .fold(Agg::EMPTY, |acc, (_, a)| acc.merge(a));
            assert_eq!(w.agg(), direct, "window at {start}");
        }
    }
}
