//! Database errors by what to do about them, and the one retry loop for database work.
//!
//! - **Transient**: the server or the connection, not the data: connection lost or refused,
//!   server gone or shutting down, lock wait timeout, deadlock, read-only during a failover, and
//!   anything not known to be about the data (a missing grant, a missing table: an operator fixes
//!   those while the service waits). Retried with backoff; the service's readiness says so once
//!   the same work has failed for a minute ([`crate::observe::Health::write_failed`]).
//! - **Rejected**: the server refused the data itself (too long, out of range, incorrect value,
//!   null in a NOT NULL column, a check or foreign key constraint, a packet over
//!   `max_allowed_packet`): retrying the same rows fails the same way, so the writers split the
//!   batch to find the rows and keep exactly those as dead letters.

use std::{fmt::Display, future::Future, sync::Arc};

use sqlx::mysql::MySqlDatabaseError;

use crate::{backoff::Backoff, metrics as m, observe::Health};

/// What a failed database operation calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retry the same work later.
    Transient,
    /// The data was refused: the same work fails again.
    Rejected,
}

impl Failure {
    /// The `kind` label of `coinstream_write_failures_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Transient => "transient",
            Failure::Rejected => "rejected",
        }
    }
}

/// MySQL and MariaDB error numbers that refuse the data of a statement.
const REJECTED: [u16; 22] = [
    1048, // column cannot be null
    1062, // duplicate entry (a unique key other than the one an upsert targets)
    1153, // packet bigger than max_allowed_packet
    1264, // out of range value for column
    1265, // data truncated
    1292, // truncated incorrect value (e.g. a datetime)
    1300, // invalid character string
    1365, // division by 0
    1366, // incorrect value for column
    1367, // illegal value during parsing
    1406, // data too long for column
    1411, // incorrect value for function
    1416, // cannot get geometry object
    1451, // foreign key: a child row exists
    1452, // foreign key: no parent row
    1690, // value out of range (BIGINT, DOUBLE)
    3140, // invalid JSON text
    3819, // check constraint violated (MySQL)
    4025, // constraint failed (MariaDB's CHECK)
    1263, // null given for a NOT NULL column
    1261, // row does not contain data for all columns
    1136, // column count does not match value count
];

/// Classifies a database error.
pub fn classify(e: &sqlx::Error) -> Failure {
    let Some(db) = e.as_database_error() else {
        return Failure::Transient; // I/O, TLS, pool timeouts, protocol: the connection
    };
    let number = db
        .try_downcast_ref::<MySqlDatabaseError>()
        .map(|e| e.number());
    let sqlstate = db.code();
    // SQLSTATE class 22 is a data exception, 23 an integrity constraint violation; 40001 (a
    // deadlock) is class 40 and stays transient.
    let data_class = sqlstate
        .as_deref()
        .is_some_and(|s| s.starts_with("22") || s.starts_with("23"));
    if data_class || number.is_some_and(|n| REJECTED.contains(&n)) {
        Failure::Rejected
    } else {
        Failure::Transient
    }
}

/// [`classify`] for an error that may hold a database error; `None` when it does not (not a
/// database failure: not worth retrying).
pub fn classify_any(e: &anyhow::Error) -> Option<Failure> {
    e.downcast_ref::<sqlx::Error>().map(classify)
}

/// The backoff between attempts of one piece of database work, and its visibility: every failed
/// attempt is counted by kind in the metrics and logged, and the service's health knows since
/// when the work has been failing (readiness 503 after a minute).
#[derive(Debug)]
pub struct Retrier {
    backoff: Backoff,
    health: Option<Arc<Health>>,
    /// Failed attempts so far.
    pub failures: u64,
}

impl Retrier {
    pub fn new(health: Option<Arc<Health>>) -> Self {
        Retrier {
            backoff: Backoff::database(),
            health,
            failures: 0,
        }
    }

    /// Counts a failed attempt of `kind` (metric and health); the caller logs what it does next.
    pub fn failed(&mut self, kind: Failure, what: &str, error: &impl Display) {
        self.failures += 1;
        m::WRITE_FAILURES.with_label_values(&[kind.as_str()]).inc();
        if let Some(h) = &self.health {
            h.write_failed(&format!("{what}: {error}"));
        }
    }

    /// After a transient failure: counts it, logs a WARN and waits the next backoff delay.
    pub async fn wait(&mut self, what: &str, error: &impl Display) {
        self.failed(Failure::Transient, what, error);
        let error = error.to_string();
        let delay = self.backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, attempt = self.failures, "{what} failed; retrying");
        tokio::time::sleep(delay).await;
    }

    /// The work succeeded: readiness no longer waits on it.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
        if let Some(h) = &self.health {
            h.write_succeeded();
        }
    }
}

/// Runs `op` until it succeeds, retrying transient database errors with backoff. A rejected
/// database error or any other error is returned. Returns the value and the failed attempts.
pub async fn retry<T, F, Fut>(
    what: &str,
    health: Option<&Arc<Health>>,
    mut op: F,
) -> anyhow::Result<(T, u64)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut retrier = Retrier::new(health.cloned());
    loop {
        match op().await {
            Ok(v) => {
                retrier.succeeded();
                return Ok((v, retrier.failures));
            }
            Err(e) if classify_any(&e) == Some(Failure::Transient) => {
                retrier.wait(what, &format!("{e:#}")).await
            }
            Err(e) => {
                if let Some(kind) = classify_any(&e) {
                    retrier.failed(kind, what, &format!("{e:#}"));
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&io), Failure::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Transient);
        let any = anyhow::Error::from(sqlx::Error::PoolTimedOut);
        assert_eq!(classify_any(&any), Some(Failure::Transient));
        assert_eq!(classify_any(&anyhow::anyhow!("not a database error")), None);
    }
}
