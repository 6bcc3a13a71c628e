//! `--replay-dead-letters` for an ingesting service: each of its letters not replayed yet (of its
//! group, or older rows without a group) is parsed again and, when it is accepted now, its rows
//! are written in the same transaction that marks it replayed, so a letter is applied once
//! however often the replay runs or is killed. A letter refused again keeps its place, with its
//! attempts counted and the latest error.

use sqlx::MySqlPool;

use super::{write::execute_all, Meta, Sink};
use crate::{
    dead_letters::{self, ReplayArgs, ReplayOutcome, Stored},
    offsets::OffsetStore,
};
use common::{
    retry::{classify, Failure, Retrier},
    Context,
};

/// Replays the service's dead letters selected by `args` and logs the outcome.
pub(super) async fn replay<S: Sink>(
    sink: &S,
    pool: &MySqlPool,
    service: &str,
    store: &OffsetStore,
    args: &ReplayArgs,
    ctx: &Context,
) -> anyhow::Result<()> {
    let mut outcome = ReplayOutcome::default();
    let mut after = 0;
    let mut retrier = Retrier::new(Some(ctx.health.clone()));
    loop {
        let page = dead_letters::pending(pool, service, store.group(), args, after).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for letter in &page {
            if ctx.shutdown.is_cancelled() {
                tracing::warn!("stopping the replay: asked to stop");
                return outcome.finish(service);
            }
            loop {
                match replay_one(sink, pool, letter).await {
                    Ok(Some(())) => outcome.applied += 1,
                    Ok(None) => outcome.already += 1,
                    Err(Again::Refused(error)) => {
                        outcome.failed += 1;
                        dead_letters::failed_again(pool, letter.id, &error).await?;
                    }
                    Err(Again::Db(e)) if classify(&e) == Failure::Transient => {
                        retrier.wait("replaying a dead letter", &e).await;
                        continue;
                    }
                    Err(Again::Db(e)) => {
                        outcome.failed += 1;
                        let error = format!("the database refused the row: {e}");
                        dead_letters::failed_again(pool, letter.id, &error).await?;
                    }
                }
                retrier.succeeded();
                break;
            }
        }
    }
    outcome.finish(service)
}

enum Again {
    /// Refused again by the parser.
    Refused(String),
    Db(sqlx::Error),
}

/// Applies one letter: `Some` when applied now, `None` when another replay marked it meanwhile.
async fn replay_one<S: Sink>(
    sink: &S,
    pool: &MySqlPool,
    letter: &Stored,
) -> Result<Option<()>, Again> {
    let meta = Meta {
        partition: letter.partition,
        offset: letter.offset,
        published_ms: letter.published_ms,
    };
    let row = sink
        .parse(meta, &letter.payload)
        .map_err(|r| Again::Refused(r.error))?;
    let statements = sink.statements(&[&row]);
    let mut tx = pool.begin().await.map_err(Again::Db)?;
    if !dead_letters::mark_replayed(&mut tx, letter.id)
        .await
        .map_err(Again::Db)?
    {
        return Ok(None);
    }
    execute_all(&mut tx, &statements).await.map_err(Again::Db)?;
    tx.commit().await.map_err(Again::Db)?;
    tracing::info!(
        id = letter.id,
        partition = letter.partition,
        offset = letter.offset,
        "dead letter replayed"
    );
    Ok(Some(()))
}
