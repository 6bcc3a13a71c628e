//! Emitting windows: which windows of each spec are due (closed since the last emission, changed
//! in update mode, or closed before and changed within the allowed lateness), assembled from the
//! pair's slices with a two-stack sliding aggregation, and dropping what no admitting window
//! holds any more.

use super::{agg, specs, Agg, Emission, Mode, PairState, Specs, WindowSpec};

/// Emissions of one pair: per spec, windows ending in `(from, wm]` that hold anything (final),
/// windows emitted final before that took an update within the allowed lateness (final again,
/// next revision), and in update mode the open windows holding a dirty time.
pub(super) fn emit_pair(
    state: &mut PairState,
    specs: &Specs,
    from: i64,
    wm: i64,
    mode: Mode,
    out: &mut Vec<Emission>,
) {
    // The watermark has not moved: nothing closed, only changed windows can be due.
    let quiet = wm == from;
    if quiet && state.dirty.is_empty() {
        return;
    }
    let refire = std::mem::take(&mut state.refire);
    let mut dirty = std::mem::take(&mut state.dirty);
    dirty.sort_unstable();
    dirty.dedup();
    // What a window closing now can hold: every window of a slice (or late update) at or before
    // `from - largest size` ended by `from` and was emitted final then.
    let mut points: Vec<i64> = Vec::new();
    if !quiet {
        let horizon = from.saturating_sub(specs.max_size_us());
        let first = state.slices.partition_point(|(s, _)| *s <= horizon);
        points.extend(state.slices.range(first..).map(|(s, _)| *s));
        let late = state.late.iter().map(|l| l.time).filter(|t| *t > horizon);
        let before = points.len();
        points.extend(late);
        if points.len() > before {
            points.sort_unstable();
        }
    }
    let mut starts = Vec::new();
    for (k, spec) in specs.list().iter().enumerate() {
        let size = spec.size_us;
        starts.clear();
        // Final: windows ending in (from, wm].
        let (lo, hi) = (from.saturating_sub(size) + 1, wm.saturating_sub(size));
        specs::window_starts(spec, &points, lo, hi, &mut starts);
        if k == 0 {
            starts.extend(
                state
                    .legacy
                    .iter()
                    .map(|(s, _)| *s)
                    .filter(|s| (lo..=hi).contains(s)),
            );
        }
        if mode == Mode::Update {
            let lo = wm.saturating_sub(size).saturating_add(1);
            specs::window_starts(spec, &dirty, lo, i64::MAX, &mut starts);
        }
        // Emitted final before, changed within the allowed lateness: final again (those it
        // was admitted into: ending after the admission horizon when it arrived).
        for &(time, admitted) in &refire {
            let lo = admitted.saturating_sub(size).saturating_add(1);
            specs::window_starts(spec, &[time], lo, from.saturating_sub(size), &mut starts);
        }
        starts.sort_unstable();
        starts.dedup();
        let before = out.len();
        assemble(state, spec, k == 0, &starts, wm, out);
        for e in &mut out[before..] {
            if e.end <= from {
                e.revision = state.next_revision(*spec, e.start);
            }
        }
    }
}

/// The windows of `spec` starting at `starts` (sorted), from the pair's slices, late updates and
/// (for the first spec) windows from before slicing; empty ones are skipped.
fn assemble(
    state: &PairState,
    spec: &WindowSpec,
    first_spec: bool,
    starts: &[i64],
    wm: i64,
    out: &mut Vec<Emission>,
) {
    let mut window = agg::Window::default();
    let mut next = 0;
    for &start in starts {
        let end = start + spec.size_us;
        while let Some((s, a)) = state.slices.get(next).filter(|(s, _)| *s < end) {
            window.push(*s, *a);
            next += 1;
        }
        window.drop_before(start);
        let mut agg = window.agg();
        for l in &state.late {
            if (start..end).contains(&l.time) && l.arrived < end {
                agg = agg.merge(&Agg::new(l.time, l.rate));
            }
        }
        if first_spec {
            if let Ok(i) = state.legacy.binary_search_by_key(&start, |(s, _)| *s) {
                agg = agg.merge(&state.legacy[i].1);
            }
        }
        if agg.count > 0 {
            out.push(Emission {
                pair: state.pair,
                spec: *spec,
                start,
                end,
                agg,
                is_final: end <= wm,
                revision: 0,
            });
        }
    }
}

/// Drops what no admitting window holds (`wm`: the admission horizon): slices and late updates
/// whose every window ended by it, windows from before slicing likewise, revisions of windows
/// that no longer admit, duplicate-log times behind `horizon`.
pub(super) fn prune(state: &mut PairState, specs: &Specs, wm: i64, horizon: i64) {
    while state
        .slices
        .front()
        .is_some_and(|(s, _)| specs.last_end(*s) <= wm)
    {
        state.slices.pop_front();
    }
    state.late.retain(|l| specs.last_end(l.time) > wm);
    state.legacy.retain(|(s, _)| {
        let size = specs.list()[0].size_us;
        s + size > wm
    });
    state
        .revisions
        .retain(|(spec, start, _)| start + spec.size_us > wm);
    state.seen.prune_before(horizon);
}
