//! Offsets missing between a partition's next offset (MySQL's) and the message the broker hands
//! over: what to do about them, as pure decisions (the runtime does the seeking).
//!
//! A message beyond the next offset means either that Kafka's group offset (only a hint) was
//! ahead of MySQL's, or that the broker holds no messages there (deleted by retention, removed
//! by compaction, transaction markers). The runtime first goes back to the next offset and drops
//! the message (it comes again). Only when the broker, read from the next offset, still starts
//! later does it confirm the offsets between hold nothing; they are then passed over with a WARN
//! naming the range, and counted. A seek that fails is retried; one that keeps failing makes
//! the instance rejoin its group. A message past a gap is never applied before the broker has
//! confirmed the gap.

/// What the runtime has done about a gap in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GapState {
    /// No gap seen since the partition was assigned (or since the last one was settled).
    #[default]
    Clear,
    /// Went back to `to`; the next message of the partition is the broker's answer.
    SoughtBack { to: i64 },
}

/// What to do with message `offset` of a partition whose next offset is `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapAction {
    /// The message is the next one: apply it.
    Apply,
    /// Applied before: skip it.
    AlreadyApplied,
    /// Go back to `to` and drop this message: it comes again after the seek.
    SeekBack { to: i64 },
    /// The broker, read from `from`, starts at `to`: no messages in `from..to`. Pass over them
    /// (WARN, counted), then apply the message.
    Skip { from: i64, to: i64 },
}

/// Decides about message `offset` given the partition's `next` offset (`None`: nothing stored,
/// the first message starts the partition) and the gap state; returns the action and the state
/// after it.
pub fn decide(state: GapState, next: Option<i64>, offset: i64) -> (GapAction, GapState) {
    let Some(next) = next else {
        return (GapAction::Apply, GapState::Clear);
    };
    if offset < next {
        return (GapAction::AlreadyApplied, state);
    }
    if offset == next {
        return (GapAction::Apply, GapState::Clear);
    }
    match state {
        GapState::SoughtBack { to } if to == next => (
            GapAction::Skip {
                from: next,
                to: offset,
            },
            GapState::Clear,
        ),
        _ => (
            GapAction::SeekBack { to: next },
            GapState::SoughtBack { to: next },
        ),
    }
}

/// The seek back failed: the state to keep (the next message beyond asks for a seek again).
pub fn seek_failed() -> GapState {
    GapState::Clear
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_gap_is_passed_only_after_the_broker_confirms_it() {
        // Kafka's hint was ahead: the first message is 10 while MySQL says 5.
        let (a, s) = decide(GapState::Clear, Some(5), 10);
        assert_eq!(a, GapAction::SeekBack { to: 5 });
        // After the seek the broker starts at 5: apply, gap settled.
        assert_eq!(decide(s, Some(5), 5), (GapAction::Apply, GapState::Clear));
        // Retention deleted 5..8: after the seek the broker starts at 8.
        let (_, s) = decide(GapState::Clear, Some(5), 10);
        assert_eq!(
            decide(s, Some(5), 8),
            (GapAction::Skip { from: 5, to: 8 }, GapState::Clear)
        );
    }

    #[test]
    fn a_failed_seek_never_applies_past_the_gap() {
        let (a, _) = decide(GapState::Clear, Some(5), 10);
        assert_eq!(a, GapAction::SeekBack { to: 5 });
        let s = seek_failed();
        // The next message beyond (fetched before any seek happened) asks for a seek again.
        assert_eq!(decide(s, Some(5), 11).0, GapAction::SeekBack { to: 5 });
    }

    #[test]
    fn a_rewind_is_a_new_gap() {
        // Sought back to 5, then the processor rewound the partition to 3: the next message
        // beyond 3 is a new question for the broker, not the answer about 5.
        let s = GapState::SoughtBack { to: 5 };
        assert_eq!(decide(s, Some(3), 9).0, GapAction::SeekBack { to: 3 });
    }

    proptest! {
        /// Whatever the broker delivers, a message beyond the next offset is applied only
        /// right after a seek back to exactly that offset.
        #[test]
        fn never_applies_past_an_unconfirmed_gap(
            deliveries in prop::collection::vec((0i64..40, any::<bool>()), 1..60),
        ) {
            let mut next = Some(0i64);
            let mut state = GapState::Clear;
            let mut sought_to: Option<i64> = None;
            for (offset, seek_ok) in deliveries {
                let before = (state, next);
                let (action, after) = decide(state, next, offset);
                match action {
                    GapAction::Apply => {
                        prop_assert_eq!(Some(offset), before.1);
                        next = Some(offset + 1);
                        sought_to = None;
                        state = after;
                    }
                    GapAction::AlreadyApplied => { state = after; }
                    GapAction::SeekBack { to } => {
                        prop_assert_eq!(Some(to), before.1);
                        if seek_ok { sought_to = Some(to); state = after; } else { sought_to = None; state = seek_failed(); }
                    }
                    GapAction::Skip { from, to } => {
                        prop_assert_eq!(sought_to, Some(from), "skipped without a seek to the gap's start");
                        prop_assert_eq!(to, offset);
                        next = Some(offset + 1);
                        sought_to = None;
                        state = after;
                    }
                }
            }
        }
    }
}
