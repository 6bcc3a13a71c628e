//! The consumer's librdkafka context: records rebalances for the runtime. librdkafka calls back
//! inside `recv` (on the thread polling the consumer); the runtime is woken at once and applies
//! the events between messages, where it may wait for the database (not in the callback).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex,
};

use rdkafka::{
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
    ClientContext, TopicPartitionList,
};

/// A rebalance seen by [`GroupEvents`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// The new assignment (eager protocol: the whole set, after a revocation of the old one).
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer context collecting rebalance events.
#[derive(Debug, Default)]
pub struct GroupEvents {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Whether `events` is non-empty, readable without the lock on the message path.
    pending: AtomicBool,
    /// Wakes the runtime when an event arrives (a rebalance completes while `recv` waits).
    arrived: tokio::sync::Notify,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl GroupEvents {
    fn push(&self, event: RebalanceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
        self.pending.store(true, Ordering::Release);
        self.arrived.notify_one();
    }

    /// Completes when an event has arrived since the last wake-up (at once if one is pending).
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }

    /// Whether rebalances wait to be applied.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The rebalances since the last call, in order.
    pub fn drain(&self) -> Vec<RebalanceEvent> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *events)
    }
}

impl ClientContext for GroupEvents {}

impl ConsumerContext for GroupEvents {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let ps = partitions_of(tpl);
                tracing::info!(partitions = ?ps, "partitions revoked");
                self.push(RebalanceEvent::Revoked(ps));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let ps = partitions_of(tpl);
            tracing::info!(partitions = ?ps, "partitions assigned");
            self.push(RebalanceEvent::Assigned(ps));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_drain_in_order_and_clear_the_flag() {
        let ctx = GroupEvents::default();
        assert!(!ctx.pending());
        ctx.push(RebalanceEvent::Revoked(vec![1]));
        ctx.push(RebalanceEvent::Assigned(vec![0, 2]));
        assert!(ctx.pending());
        assert_eq!(
            ctx.drain(),
            vec![
                RebalanceEvent::Revoked(vec![1]),
                RebalanceEvent::Assigned(vec![0, 2])
            ]
        );
        assert!(!ctx.pending());
        assert!(ctx.drain().is_empty());
    }
}
