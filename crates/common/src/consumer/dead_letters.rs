//! `dead_letters`: messages a service could not use, kept with where they came from and why. A
//! message is logged once, when it is found, and written in the same transaction as the offsets
//! that move past it, so it is neither lost nor kept twice (a replay collapses on the unique key).

use sqlx::MySqlConnection;

/// A message that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: String,
}

impl DeadLetter {
    /// Keeps a malformed message and logs it (WARN, with topic, partition, offset and the error).
    pub fn found(
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        error: String,
    ) -> Self {
        tracing::warn!(topic, partition, offset, %error, "malformed message: kept in dead_letters");
        DeadLetter {
            partition,
            offset,
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            error,
        }
    }
}

/// Writes dead letters of `service` read from `topic` in the open transaction of `conn`.
pub async fn insert(
    conn: &mut MySqlConnection,
    service: &str,
    topic: &str,
    letters: &[&DeadLetter],
) -> Result<(), sqlx::Error> {
    for chunk in letters.chunks(500) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO dead_letters (service, topic, kafka_partition, kafka_offset, message_key, payload, error) \
             VALUES {values} ON DUPLICATE KEY UPDATE id = id"
        );
        let mut q = sqlx::query(&sql);
        for d in chunk {
            q = q
                .bind(service)
                .bind(topic)
                .bind(d.partition)
                .bind(d.offset)
                .bind(d.key.as_deref())
                .bind(d.payload.as_slice())
                .bind(d.error.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
