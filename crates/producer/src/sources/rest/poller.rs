//! The CoinAPI source: polls every pair each interval and publishes what is new.
//!
//! Per request: a 401 stops the producer (the key is wrong); 403/429 wait until the
//! `X-RateLimit-Reset` time when given, else back off exponentially with jitter, then retry; 550
//! skips the pair this round; 5xx, timeouts and connection errors retry with backoff up to
//! `max_retries` times, then skip the request this round; a malformed body is logged with an
//! excerpt and counted. An update whose `time` equals the last one published for its pair is not
//! published again.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use common::{Pair, RateUpdate};
use tokio_util::sync::CancellationToken;

use common::backoff::Backoff;

use crate::{
    publisher::{PublishError, Publisher},
    sources::rest::client::{CoinApiClient, Outcome, Quota, Request},
};

/// Tunables of the poller.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundReport {
    pub published: u64,
    pub unchanged: u64,
    pub malformed: u64,
    /// Pairs skipped this round: 550, missing from a body, rejected, or out of retries.
    pub skipped: Vec<Pair>,
    /// Requests that failed (any non-200 or transport error), retries included.
    pub failed_requests: u64,
    /// Every wait taken before a retry, in order.
    pub backoffs: Vec<Duration>,
    /// The last quota headers seen.
    pub quota: Quota,
}

/// Why polling stops.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("CoinAPI rejected the API key (HTTP 401: {0}); check COINAPI_KEY")]
    InvalidKey(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Polls CoinAPI for a fixed pair list.
#[derive(Debug)]
pub struct Poller {
    client: CoinApiClient,
    plan: Vec<Request>,
    config: PollerConfig,
    last_published: HashMap<Pair, DateTime<Utc>>,
    rate_backoff: Backoff,
}

/// Retries of one request after transient failures.
#[derive(Debug)]
struct Retry {
    transient: Backoff,
    attempts: u32,
}

impl Poller {
    pub fn new(client: CoinApiClient, pairs: &[Pair], config: PollerConfig) -> Self {
        let rate_backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        Poller {
            client,
            plan: Request::plan(pairs),
            config,
            last_published: HashMap::new(),
            rate_backoff,
        }
    }

    /// The requests one round makes.
    pub fn plan(&self) -> &[Request] {
        &self.plan
    }

    /// Fetches every pair once and publishes what is new. Returns early (with what was done so
    /// far) when `shutdown` fires during a wait.
    pub async fn poll_round(
        &mut self,
        publisher: &mut Publisher,
        shutdown: &CancellationToken,
    ) -> Result<RoundReport, PollError> {
        let mut report = RoundReport::default();
        for req in self.plan.clone() {
            let mut retry = Retry {
                transient: Backoff::new(self.config.backoff_initial, self.config.backoff_max),
                attempts: 0,
            };
            loop {
                let (outcome, quota) = self.client.fetch(&req).await;
                if !quota.is_empty() {
                    report.quota = quota.clone();
                }
                let Some(wait) = self.handle(&req, outcome, &mut retry, publisher, &mut report)?
                else {
                    break;
                };
                report.backoffs.push(wait);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Ok(report),
                }
            }
            publisher.check()?;
        }
        Ok(report)
    }

    /// Acts on one request's outcome; returns how long to wait before asking again, `None`
    /// when the request is done (published, or skipped this round).
    fn handle(
        &mut self,
        req: &Request,
        outcome: Outcome,
        retry: &mut Retry,
        publisher: &mut Publisher,
        report: &mut RoundReport,
    ) -> Result<Option<Duration>, PollError> {
        match outcome {
            Outcome::Rates {
                updates,
                missing,
                bad_entries,
            } => {
                self.rate_backoff.reset();
                for e in &bad_entries {
                    tracing::warn!(request = %req.path(), error = %e, "malformed entry in CoinAPI response");
                }
                report.malformed += bad_entries.len() as u64;
                for p in &missing {
                    tracing::warn!(pair = %p, "no rate for this pair in the response; skipped this round");
                }
                report.skipped.extend(missing);
                self.publish_new(updates, publisher, report)?;
                Ok(None)
            }
            Outcome::InvalidKey(m) => Err(PollError::InvalidKey(m)),
            Outcome::NoData(m) => {
                report.failed_requests += 1;
                tracing::warn!(request = %req.path(), message = %m, "CoinAPI has no data (550); skipped this round");
                report.skipped.extend(req.pairs());
                Ok(None)
            }
            Outcome::Rejected { status, message } => {
                report.failed_requests += 1;
                tracing::error!(request = %req.path(), status, %message, "CoinAPI rejected the request; skipped this round");
                report.skipped.extend(req.pairs());
                Ok(None)
            }
            Outcome::Malformed { error, excerpt } => {
                report.malformed += 1;
                tracing::warn!(request = %req.path(), %error, body = %excerpt, "malformed CoinAPI response");
                Ok(None)
            }
            Outcome::RateLimited {
                status,
                message,
                reset,
            } => {
                report.failed_requests += 1;
                let until_reset = reset.and_then(|r| (r - Utc::now()).to_std().ok());
                let wait = until_reset.unwrap_or_else(|| self.rate_backoff.next_delay());
                tracing::warn!(
                    request = %req.path(), status, %message,
                    remaining = ?report.quota.remaining, limit = ?report.quota.limit,
                    reset = ?reset, wait = ?wait,
                    "CoinAPI rate limit; waiting before retrying"
                );
                Ok(Some(wait))
            }
            Outcome::Transient(m) => {
                report.failed_requests += 1;
                retry.attempts += 1;
                if retry.attempts > self.config.max_retries {
                    tracing::error!(request = %req.path(), error = %m, attempts = retry.attempts, "CoinAPI request failed; skipped this round");
                    report.skipped.extend(req.pairs());
                    return Ok(None);
                }
                let wait = retry.transient.next_delay();
                tracing::warn!(request = %req.path(), error = %m, attempt = retry.attempts, wait = ?wait, "CoinAPI request failed; retrying");
                Ok(Some(wait))
            }
        }
    }

    /// Publishes the updates whose time moved since the last one published for their pair.
    fn publish_new(
        &mut self,
        updates: Vec<RateUpdate>,
        publisher: &mut Publisher,
        report: &mut RoundReport,
    ) -> Result<(), PollError> {
        for u in updates {
            if self.last_published.get(&u.pair) == Some(&u.time) {
                report.unchanged += 1;
                continue;
            }
            publisher.send(&u)?;
            self.last_published.insert(u.pair, u.time);
            report.published += 1;
        }
        Ok(())
    }
}
