//! The window specs one engine computes, and the slicing they share: slices of width
//! `gcd(every size and slide)`, so each window of every spec is a whole number of slices and
//! each update touches one slice, whatever the specs.

use common::window::WindowSpec;

/// The specs of one aggregator (non-empty, sorted, no repeats) and their slice width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specs {
    list: Vec<WindowSpec>,
    slice_us: i64,
    max_size_us: i64,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Specs {
    /// The specs of `list` (sorted and deduplicated here); panics if it is empty.
    pub fn new(mut list: Vec<WindowSpec>) -> Self {
        list.sort();
        list.dedup();
        assert!(!list.is_empty(), "at least one window spec");
        let slice_us = list
            .iter()
            .fold(0, |g, s| gcd(gcd(g, s.size_us), s.slide_us));
        let max_size_us = list.iter().map(|s| s.size_us).max().unwrap_or(0);
        Specs {
            list,
            slice_us,
            max_size_us,
        }
    }

    pub fn one(spec: WindowSpec) -> Self {
        Specs::new(vec![spec])
    }

    pub fn list(&self) -> &[WindowSpec] {
        &self.list
    }

    /// The slice width: every size and slide is a multiple of it.
    pub fn slice_us(&self) -> i64 {
        self.slice_us
    }

    pub fn max_size_us(&self) -> i64 {
        self.max_size_us
    }

    /// Start of the slice holding `t`.
    #[inline]
    pub fn slice_of(&self, t: i64) -> i64 {
        t.div_euclid(self.slice_us) * self.slice_us
    }

    /// The end of the latest window of any spec covering `t`: once the watermark reaches it,
    /// every window holding `t` has closed.
    pub fn last_end(&self, t: i64) -> i64 {
        self.list.iter().map(|s| s.last_end(t)).max().unwrap_or(t)
    }

    /// The end of the earliest window of any spec covering `t`: while the watermark is before
    /// it, every window holding `t` is open.
    pub fn first_end(&self, t: i64) -> i64 {
        self.list.iter().map(|s| s.first_end(t)).min().unwrap_or(t)
    }
}

/// Of the windows of `spec` covering `t`, how many have closed at watermark `wm` (end <= wm).
pub fn closed_windows(spec: &WindowSpec, t: i64, wm: i64) -> u32 {
    let first = spec.first_end(t);
    if first > wm {
        return 0;
    }
    let closed = (wm - first) / spec.slide_us + 1;
    closed.min(spec.windows_per_event()) as u32
}

/// Starts of the windows of `spec` (aligned to its slide) that cover at least one of `points`
/// (sorted) and whose start is in `lo..=hi`, sorted, each once. Linear in the points and the
/// windows returned, however far apart the points are.
pub fn window_starts(spec: &WindowSpec, points: &[i64], lo: i64, hi: i64, out: &mut Vec<i64>) {
    let slide = spec.slide_us;
    let mut next = i64::MIN; // the first start not yet returned
    for &p in points {
        let last = p.div_euclid(slide) * slide; // the latest window covering p
        let first = last - (spec.size_us - slide); // the earliest
        let from = first.max(lo).max(next);
        let to = last.min(hi);
        if from > to {
            continue;
        }
        // `from` is aligned unless clipped by `lo`.
        let mut s = from.div_euclid(slide) * slide;
        if s < from {
            s += slide;
        }
        while s <= to {
            out.push(s);
            s += slide;
        }
        next = to.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn slices_are_the_gcd_of_sizes_and_slides() {
        let specs = Specs::new(vec![
            WindowSpec::tumbling(60 * S),
            WindowSpec::sliding(3600 * S, 60 * S),
            WindowSpec::tumbling(300 * S),
        ]);
        assert_eq!(specs.slice_us(), 60 * S);
        assert_eq!(specs.max_size_us(), 3600 * S);
        assert_eq!(specs.list()[0], WindowSpec::tumbling(60 * S));
        let specs = Specs::new(vec![
            WindowSpec::sliding(12 * S, 4 * S),
            WindowSpec::tumbling(6 * S),
        ]);
        assert_eq!(specs.slice_us(), 2 * S);
        assert_eq!(specs.slice_of(-1), -2 * S);
    }

    #[test]
    fn closed_windows_count_by_end() {
        let spec = WindowSpec::sliding(10, 5);
        // Windows covering 12: [5,15) and [10,20).
        assert_eq!(closed_windows(&spec, 12, 14), 0);
        assert_eq!(closed_windows(&spec, 12, 15), 1);
        assert_eq!(closed_windows(&spec, 12, 20), 2);
        assert_eq!(closed_windows(&spec, 12, 1000), 2);
    }

    #[test]
    fn window_starts_cover_the_points_once() {
        let spec = WindowSpec::sliding(10, 5);
        let mut out = Vec::new();
        window_starts(&spec, &[12, 13, 31], i64::MIN, i64::MAX, &mut out);
        assert_eq!(out, vec![5, 10, 25, 30]);
        out.clear();
        window_starts(&spec, &[12, 13, 31], 7, 26, &mut out);
        assert_eq!(out, vec![10, 25]);
        out.clear();
        window_starts(&spec, &[-1], i64::MIN, i64::MAX, &mut out);
        assert_eq!(out, vec![-10, -5]);
    }
}
