//! MySQL access: a pool that waits (bounded, logged) for the server, and the embedded migrations.
//!
//! Migrations live in `migrations/` at the workspace root and are compiled into every binary.
//! sqlx takes a MySQL advisory lock (`GET_LOCK`) around them, so several services starting at once
//! apply each migration exactly once.

use std::time::{Duration, Instant};

use sqlx::{
    migrate::{MigrateError, Migrator},
    mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions},
    Connection,
};

use crate::{backoff::Backoff, config::MySqlArgs};

/// The schema, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Why we could not get a usable database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("MySQL at {target} not reachable after {waited:?}: {source}")]
    Unreachable {
        target: String,
        waited: Duration,
        #[source]
        source: sqlx::Error,
    },
    #[error("MySQL at {target} refused the connection: {source}")]
    Refused {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("MySQL at {target}: the TLS connection failed; check MYSQL_SSL_MODE and MYSQL_SSL_CA (a server without TLS needs MYSQL_SSL_MODE=preferred or disabled)")]
    Tls {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations to {target}: {source}")]
    Migrate {
        target: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// Closes a pool at the end of a service, waiting at most 2 s (a write abandoned at the shutdown
/// timeout may still hold a connection that does not answer).
pub async fn close(pool: &MySqlPool) {
    if tokio::time::timeout(Duration::from_secs(2), pool.close())
        .await
        .is_err()
    {
        tracing::debug!("closing the database pool timed out");
    }
}

/// Connects with the service's settings and applies the migrations.
pub async fn connect_and_migrate(args: &MySqlArgs) -> anyhow::Result<MySqlPool> {
    let opts = args.connect_options()?;
    let target = args.describe();
    let pool = connect(opts, &target, args.pool_size, args.connect_timeout).await?;
    migrate(&pool, &target).await?;
    Ok(pool)
}

/// Opens a pool, retrying with backoff while the server is unreachable, for at most `max_wait`.
/// Errors the server itself reports (bad password, unknown database) and TLS failures fail at
/// once: waiting cannot fix them. `target` is for logs and must not hold a password.
pub async fn connect(
    opts: MySqlConnectOptions,
    target: &str,
    pool_size: u32,
    max_wait: Duration,
) -> Result<MySqlPool, DbError> {
    connect_with_acquire_timeout(opts, target, pool_size, max_wait, Duration::from_secs(30)).await
}

/// [`connect`], with the pool's acquire timeout: how long a query waits for a connection (and
/// the pool keeps reconnecting) before it fails, once the server has gone.
pub async fn connect_with_acquire_timeout(
    opts: MySqlConnectOptions,
    target: &str,
    pool_size: u32,
    max_wait: Duration,
    acquire_timeout: Duration,
) -> Result<MySqlPool, DbError> {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempt = 1u32;
    // Probe with single connections: the pool itself would keep retrying silently until its
    // acquire timeout, and we want each failed attempt logged and the total wait bounded.
    loop {
        match MySqlConnection::connect_with(&opts).await {
            Ok(conn) => {
                let _ = conn.close().await;
                if attempt > 1 {
                    tracing::info!(%target, attempt, "connected to MySQL");
                }
                return MySqlPoolOptions::new()
                    .max_connections(pool_size)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(opts)
                    .await
                    .map_err(|source| DbError::Refused {
                        target: target.to_owned(),
                        source,
                    });
            }
            Err(e @ sqlx::Error::Database(_)) => {
                return Err(DbError::Refused {
                    target: target.to_owned(),
                    source: e,
                })
            }
            // Waiting does not give a server TLS, or fix a certificate.
            Err(e) if is_tls_failure(&e) => {
                return Err(DbError::Tls {
                    target: target.to_owned(),
                    source: e,
                })
            }
            Err(e) => {
                let waited = started.elapsed();
                let delay = backoff.next_delay();
                if waited + delay > max_wait {
                    return Err(DbError::Unreachable {
                        target: target.to_owned(),
                        waited,
                        source: e,
                    });
                }
                tracing::warn!(%target, attempt, error = %e, retry_in = ?delay, "MySQL not reachable yet");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Whether a failed connection is TLS's fault: sqlx's own TLS errors (no TLS on the server, an
/// unreadable CA file) and what rustls refused in the handshake (a certificate that does not
/// verify, or is for another host name), which sqlx passes on inside an I/O error.
fn is_tls_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// Applies every pending migration, idempotently. Concurrent start-ups are serialized by a MySQL
/// advisory lock held on the migrating connection. (sqlx's own lock waits with `GET_LOCK(.., -1)`,
/// which MariaDB treats as "do not wait", so on MariaDB it does not serialize anything.)
pub async fn migrate(pool: &MySqlPool, target: &str) -> Result<(), DbError> {
    let err = |source| DbError::Migrate {
        target: target.to_owned(),
        source,
    };
    // The lock lives on a connection of its own, outside the pool the migrator uses.
    let mut conn = MySqlConnection::connect_with(&pool.connect_options())
        .await
        .map_err(|e| err(MigrateError::Execute(e)))?;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('coinstream_migrate_', DATABASE()), ?)")
            .bind(MIGRATION_LOCK_WAIT.as_secs())
            .fetch_one(&mut conn)
            .await
            .map_err(|e| err(MigrateError::Execute(e)))?;
    if locked != Some(1) {
        return Err(err(MigrateError::Execute(sqlx::Error::Protocol(format!(
            "another process held the migration lock for over {MIGRATION_LOCK_WAIT:?}"
        )))));
    }
    let result = MIGRATOR.run(pool).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('coinstream_migrate_', DATABASE()))")
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result.map_err(err)
}

/// How long a starting service waits for another one's migrations.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use std::io;

    use super::is_tls_failure;

    #[test]
    fn a_refused_certificate_is_a_tls_failure_and_a_refused_connection_is_not() {
        let refused_cert =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = sqlx::Error::Io(io::Error::new(io::ErrorKind::InvalidData, refused_cert));
        assert!(is_tls_failure(&e));
        assert!(is_tls_failure(&sqlx::Error::Tls(
            "server does not support TLS".into()
        )));
        let e = sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(!is_tls_failure(&e));
        let e = sqlx::Error::Io(io::Error::new(io::ErrorKind::InvalidData, "not TLS"));
        assert!(!is_tls_failure(&e));
    }
}
