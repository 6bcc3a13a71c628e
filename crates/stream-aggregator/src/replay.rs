//! `--replay-dead-letters` for the aggregator: the group's letters not replayed yet, after a
//! fix, applied partition by partition to the partition's stored state, as a brief owner of it:
//! the partition is restored (claiming it, which fences a running instance's next flush: that
//! instance gives the partition up, rejoins and restores it again, replay included), the
//! letters that parse now are applied to its windows (an update later than the watermark is a
//! late event, as it would have been), and one flush writes the windows, the state and the outbox
//! with the letters marked replayed in the same transaction: each is applied once. The results go
//! out through the outbox when an instance next restores the partition.

use std::collections::BTreeMap;

use common::{
    retry::{classify_any, Failure, Retrier},
    Context, RateEvent,
};
use consumer::dead_letters::{self, ReplayOutcome, Stored};
use sqlx::MySqlPool;

use crate::{
    aggregator::part_flush,
    engine::Applied,
    partitions::{self, Part},
    store::{self, FlushOutcome, LateRow},
    Config, Settings, SERVICE,
};

/// `--replay-dead-letters` or `--list-dead-letters`, then exit.
pub async fn command(settings: &Settings, config: &Config, ctx: &Context) -> anyhow::Result<()> {
    let pool = common::prepare(&settings.mysql, None).await?;
    let result = if settings.replay.list {
        dead_letters::list(&pool, SERVICE, &settings.group, &settings.replay).await
    } else {
        let offsets = consumer::offsets::OffsetStore::new(&settings.group, &settings.topic);
        replay(&pool, &offsets, config, settings, ctx).await
    };
    common::db::close(&pool).await;
    result
}

async fn replay(
    pool: &MySqlPool,
    offsets: &consumer::offsets::OffsetStore,
    config: &Config,
    settings: &Settings,
    ctx: &Context,
) -> anyhow::Result<()> {
    let mut by_partition: BTreeMap<i32, Vec<Stored>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page =
            dead_letters::pending(pool, SERVICE, &settings.group, &settings.replay, after).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for letter in page.into_iter().filter(|l| l.topic == settings.topic) {
            by_partition
                .entry(letter.partition)
                .or_default()
                .push(letter);
        }
    }
    let mut outcome = ReplayOutcome::default();
    for (p, letters) in by_partition {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let (mut part, _) = partitions::restore(pool, offsets, config, &ctx.health, p).await?;
        if part.stored_offset.is_none() {
            tracing::warn!(
                partition = p,
                "no stored offset for the partition: its letters are left for later"
            );
            continue;
        }
        let replayed = apply(pool, &mut part, &letters, &mut outcome).await?;
        if replayed.is_empty() {
            continue;
        }
        write(
            pool,
            offsets,
            &mut part,
            p,
            config,
            replayed,
            &letters,
            &mut outcome,
            ctx,
        )
        .await?;
    }
    outcome.finish(SERVICE)
}

/// Applies the letters that parse now to the partition's engine; returns their ids.
async fn apply(
    pool: &MySqlPool,
    part: &mut Part,
    letters: &[Stored],
    outcome: &mut ReplayOutcome,
) -> anyhow::Result<Vec<i64>> {
    let mut replayed = Vec::new();
    for l in letters {
        let update = match RateEvent::from_json(&l.payload)
            .and_then(|u| u.check_published(l.published_ms).map(|()| u))
        {
            Ok(u) => u,
            Err(e) => {
                outcome.failed += 1;
                dead_letters::failed_again(pool, l.id, &e.to_string()).await?;
                continue;
            }
        };
        match part.engine.apply(update.pair, update.time_us, update.rate) {
            Applied::Accepted | Applied::Duplicate => {}
            Applied::Late {
                watermark,
                missed,
                applied,
            } => {
                outcome.late += u64::from(!applied);
                part.late.extend(
                    missed
                        .iter()
                        .map(|m| LateRow::of(l.offset, &update, watermark, m)),
                );
            }
        }
        part.changed = true;
        replayed.push(l.id);
    }
    Ok(replayed)
}

/// One flush of the partition with the letters marked replayed in its transaction.
#[allow(clippy::too_many_arguments)]
async fn write(
    pool: &MySqlPool,
    offsets: &consumer::offsets::OffsetStore,
    part: &mut Part,
    p: i32,
    config: &Config,
    replayed: Vec<i64>,
    letters: &[Stored],
    outcome: &mut ReplayOutcome,
    ctx: &Context,
) -> anyhow::Result<()> {
    let Some(mut flush) = part_flush(part, p, config) else {
        return Ok(());
    };
    let n = replayed.len() as u64;
    flush.replayed = replayed;
    let mut retrier = Retrier::new(Some(ctx.health.clone()));
    loop {
        match store::write_flush(pool, offsets, SERVICE, std::slice::from_mut(&mut flush)).await {
            Ok(FlushOutcome::Committed) => {
                outcome.applied += n;
                tracing::info!(partition = p, letters = n, "dead letters replayed");
                return Ok(());
            }
            Ok(FlushOutcome::Fenced(_)) => anyhow::bail!(
                "partition {p} was claimed by another instance during the replay: nothing of it was written; run the replay again"
            ),
            Err(e) => match classify_any(&e) {
                Some(Failure::Transient) => {
                    retrier.wait("writing the replayed letters", &format!("{e:#}")).await
                }
                Some(Failure::Rejected) => {
                    let error = format!("the database refused the replayed windows: {e:#}");
                    for l in letters.iter().filter(|l| flush.replayed.contains(&l.id)) {
                        outcome.failed += 1;
                        dead_letters::failed_again(pool, l.id, &error).await?;
                    }
                    return Ok(());
                }
                None => return Err(e),
            },
        }
    }
}
