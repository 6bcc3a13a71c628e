//! The CoinAPI WebSocket source (`--source coinapi-ws`): exchange rates pushed as they change.
//!
//! A connection sends the hello ([`protocol::hello`]) and then reads. An `exrate` is published
//! like a REST update, unless it is not newer than the last one published for its pair (so the
//! overlap of two connections, or a snapshot sent again on subscribing, publishes nothing twice).
//! No message for [`SILENCE`] (the server sends a heartbeat after each second of silence) means
//! the connection is dead. A `reconnect` message opens a second connection (hello sent) while the
//! first one is still read, to its end; then the second one: no gap ([`Switch`]). A lost, refused,
//! failed or silent connection is opened again after an exponential backoff with jitter. An
//! `error` about the key (or HTTP 401/403 on the upgrade) stops the producer (exit 1) with the
//! server's message; other errors reconnect. Malformed frames are counted and logged with an
//! excerpt. The key is only ever in the hello, which is never logged.

use crate::metrics as m;
use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use common::{backoff::Backoff, config::Secret, Pair};
use futures::{SinkExt, StreamExt};
use tokio::{net::TcpStream, task::JoinHandle, time::Instant};
use tokio_tungstenite::{
    tungstenite::{self, Message},
    MaybeTlsStream, WebSocketStream,
};
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Frame};
use crate::{
    publisher::{PublishError, Publisher},
    sources::rest::client::excerpt,
};

/// No message for this long: the connection is dead.
pub const SILENCE: Duration = Duration::from_secs(5);

/// The longest the statistics may hold the read loop each second.
const TICK_LIMIT: Duration = Duration::from_secs(2);

type Conn = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where and what to subscribe.
#[derive(Debug, Clone)]
pub struct WsConfig {
    pub url: String,
    pub key: Secret,
    pub pairs: Vec<Pair>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// What the source did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WsFigures {
    pub received: u64,
    /// Not newer than the last published for its pair.
    pub unchanged: u64,
    pub malformed: u64,
    /// Connections opened again (lost, or asked for by the server).
    pub reconnects: u64,
}

/// Hears the source's totals every second (statistics, metrics, health).
pub trait Observer {
    fn tick(
        &mut self,
        totals: &WsFigures,
        publisher: &Publisher,
    ) -> impl std::future::Future<Output = ()>;
}

/// Why the source stops.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("CoinAPI rejected the API key: {0}; check COINAPI_KEY")]
    InvalidKey(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Why a connection ended.
enum End {
    Lost(String),
    Stop,
}

/// The WebSocket source.
#[derive(Debug)]
pub struct WsSource {
    config: WsConfig,
    last_published: HashMap<Pair, DateTime<Utc>>,
    pub totals: WsFigures,
}

impl WsSource {
    pub fn new(config: WsConfig) -> Self {
        WsSource {
            config,
            last_published: HashMap::new(),
            totals: WsFigures::default(),
        }
    }

    /// Runs until `shutdown` or a fatal error; `observer` hears the totals every second.
    pub async fn run(
        &mut self,
        publisher: &mut Publisher,
        shutdown: &CancellationToken,
        observer: &mut impl Observer,
    ) -> Result<(), WsError> {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let conn = tokio::select! {
                c = open(&self.config) => c,
                () = shutdown.cancelled() => return Ok(()),
            };
            let reason = match conn {
                Ok(conn) => {
                    tracing::info!(url = %self.config.url, pairs = self.config.pairs.len(), "CoinAPI WebSocket connected and subscribed");
                    match self
                        .read(conn, publisher, shutdown, &mut backoff, observer)
                        .await?
                    {
                        End::Stop => return Ok(()),
                        End::Lost(reason) => reason,
                    }
                }
                Err(OpenError::Key(message)) => return Err(WsError::InvalidKey(message)),
                Err(OpenError::Failed(reason)) => reason,
            };
            self.totals.reconnects += 1;
            m::COINAPI_WS_RECONNECTS.with_label_values(&["lost"]).inc();
            let delay = backoff.next_delay();
            tracing::warn!(%reason, retry_in = ?delay, reconnects = self.totals.reconnects, "CoinAPI WebSocket connection lost; reconnecting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Reads one connection (and the ones the server asks to switch to) until it is lost.
    async fn read(
        &mut self,
        mut conn: Conn,
        publisher: &mut Publisher,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        observer: &mut impl Observer,
    ) -> Result<End, WsError> {
        let mut switch = Switch::default();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut last_seen = Instant::now();
        loop {
            let deadline = switch
                .deadline
                .unwrap_or(last_seen + Duration::from_secs(86_400));
            let text = tokio::select! {
                // What has arrived is read before any timer is looked at: a slow statistics
                // write must not make a live connection look silent.
                biased;
                () = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(None)).await;
                    return Ok(End::Stop);
                }
                read = conn.next() => {
                    let ended = match read {
                        Some(Ok(Message::Text(text))) => Ok(text),
                        None => Err("closed by the server".to_owned()),
                        Some(Err(e)) => Err(e.to_string()),
                        Some(Ok(Message::Close(frame))) => Err(format!("closed by the server: {frame:?}")),
                        Some(Ok(_)) => {
                            last_seen = Instant::now(); // ping, pong, binary: alive
                            continue;
                        }
                    };
                    match ended {
                        Ok(text) => {
                            last_seen = Instant::now();
                            text
                        }
                        Err(reason) => {
                            if !switch.finish_opening().await? {
                                return Ok(End::Lost(reason));
                            }
                            self.switch_over(&mut conn, &mut switch, "the old connection closed").await;
                            last_seen = Instant::now();
                            continue;
                        }
                    }
                }
                opened = async { switch.opening.as_mut().expect("guarded").await }, if switch.opening.is_some() => {
                    switch.opened(opened)?;
                    continue;
                }
                // The old connection has had its time: over to the new one.
                () = tokio::time::sleep_until(deadline), if switch.ready.is_some() => {
                    self.switch_over(&mut conn, &mut switch, "the old connection's time is up").await;
                    last_seen = Instant::now();
                    continue;
                }
                _ = ticker.tick() => {
                    // Failed deliveries are re-sent (and stop the producer after a minute).
                    publisher.check()?;
                    // Statistics must not hold the connection up (a slow database write).
                    let _ = tokio::time::timeout(TICK_LIMIT, observer.tick(&self.totals, publisher)).await;
                    continue;
                }
                () = tokio::time::sleep_until(last_seen + SILENCE) => {
                    if !switch.finish_opening().await? {
                        return Ok(End::Lost(format!("no message for {SILENCE:?}")));
                    }
                    self.switch_over(&mut conn, &mut switch, "the old connection went silent").await;
                    last_seen = Instant::now();
                    continue;
                }
            };
            if let Some(end) = self.handle(text.as_str(), publisher, backoff, &mut switch)? {
                return Ok(end);
            }
        }
    }

    /// One text frame; `Some` when it ends the connection.
    fn handle(
        &mut self,
        text: &str,
        publisher: &mut Publisher,
        backoff: &mut Backoff,
        switch: &mut Switch,
    ) -> Result<Option<End>, WsError> {
        match protocol::parse(text, Utc::now()) {
            Ok(Frame::Exrate(update)) => {
                // Rates flow again: the next loss starts the backoff from the beginning. (Not
                // on a repeat: a server that repeats a snapshot and drops us must not get a
                // fast loop.)
                if self.publish(update, publisher)? {
                    backoff.reset();
                }
            }
            Ok(Frame::Heartbeat) => {} // alive: `last_seen` moved
            Ok(Frame::Reconnect { within }) => switch.start(&self.config, within),
            Ok(Frame::Error(message)) if protocol::is_key_error(&message) => {
                return Err(WsError::InvalidKey(message))
            }
            Ok(Frame::Error(message)) => {
                return Ok(Some(End::Lost(format!("CoinAPI error: {message}"))))
            }
            Ok(Frame::Other(kind)) => tracing::debug!(%kind, "message type not used"),
            Err(error) => {
                self.totals.malformed += 1;
                tracing::warn!(%error, excerpt = %excerpt(text.as_bytes()), malformed = self.totals.malformed, "malformed CoinAPI WebSocket message skipped");
            }
        }
        Ok(None)
    }

    /// Closes the old connection and reads the new one from now on.
    async fn switch_over(&mut self, conn: &mut Conn, switch: &mut Switch, why: &str) {
        let Some(new) = switch.ready.take() else {
            return;
        };
        switch.deadline = None;
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(None)).await;
        *conn = new;
        self.totals.reconnects += 1;
        m::COINAPI_WS_RECONNECTS
            .with_label_values(&["requested"])
            .inc();
        tracing::info!(
            why,
            "switched to the new CoinAPI WebSocket connection, as the server asked"
        );
    }

    /// Publishes `update` unless it is not newer than the last of its pair; whether it did.
    fn publish(
        &mut self,
        update: common::RateUpdate,
        publisher: &mut Publisher,
    ) -> Result<bool, WsError> {
        self.totals.received += 1;
        if self
            .last_published
            .get(&update.pair)
            .is_some_and(|last| update.time <= *last)
        {
            self.totals.unchanged += 1;
            return Ok(false);
        }
        publisher.send(&update)?;
        self.last_published.insert(update.pair, update.time);
        Ok(true)
    }
}

/// A server-requested reconnect in progress: the new connection opens (and says hello) while the
/// old one is still read; the old one is read until it closes, goes silent or its time is up
/// (`within_seconds` and one more), so nothing it sent is lost; then the new one, whose first
/// messages repeat the old one's last (not newer: not published again).
#[derive(Default)]
struct Switch {
    opening: Option<JoinHandle<Result<Conn, OpenError>>>,
    within: Duration,
    ready: Option<Conn>,
    deadline: Option<Instant>,
}

impl Switch {
    fn start(&mut self, config: &WsConfig, within: Duration) {
        if self.opening.is_some() || self.ready.is_some() {
            return;
        }
        tracing::info!(within = ?within, "CoinAPI asks to reconnect: opening a new connection first");
        let config = config.clone();
        self.within = within;
        self.opening = Some(tokio::spawn(async move { open(&config).await }));
    }

    /// The old connection ended: is there a new one to go on with? Waits for one still opening
    /// (its connect is bounded) rather than leave a gap.
    async fn finish_opening(&mut self) -> Result<bool, WsError> {
        if self.ready.is_none() {
            if let Some(opening) = self.opening.as_mut() {
                let opened = opening.await;
                self.opened(opened)?;
            }
        }
        Ok(self.ready.is_some())
    }

    fn opened(
        &mut self,
        opened: Result<Result<Conn, OpenError>, tokio::task::JoinError>,
    ) -> Result<(), WsError> {
        self.opening = None;
        match opened {
            Ok(Ok(new)) => {
                tracing::info!("the new connection is up; reading the old one until it ends");
                self.ready = Some(new);
                self.deadline = Some(Instant::now() + self.within + Duration::from_secs(1));
            }
            Ok(Err(OpenError::Key(message))) => return Err(WsError::InvalidKey(message)),
            Ok(Err(OpenError::Failed(reason))) => {
                tracing::warn!(%reason, "opening the new connection failed; staying on the current one");
            }
            Err(e) => tracing::warn!(error = %e, "opening the new connection failed"),
        }
        Ok(())
    }
}

impl Drop for Switch {
    /// A connection still opening when its reader gives up is not left running.
    fn drop(&mut self) {
        if let Some(opening) = &self.opening {
            opening.abort();
        }
    }
}

enum OpenError {
    /// The key was refused: fatal.
    Key(String),
    Failed(String),
}

/// Connects and says hello.
async fn open(config: &WsConfig) -> Result<Conn, OpenError> {
    let (mut conn, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(config.url.as_str()),
    )
    .await
    .map_err(|_| OpenError::Failed("connecting timed out after 10 s".into()))?
    .map_err(|e| match e {
        tungstenite::Error::Http(r) if matches!(r.status().as_u16(), 401 | 403) => {
            OpenError::Key(format!("HTTP {} on the WebSocket upgrade", r.status()))
        }
        e => OpenError::Failed(e.to_string()),
    })?;
    conn.send(Message::text(protocol::hello(
        config.key.expose(),
        &config.pairs,
    )))
    .await
    .map_err(|e| OpenError::Failed(format!("sending the hello: {e}")))?;
    Ok(conn)
}
