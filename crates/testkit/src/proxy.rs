//! A fault proxy between a service and MySQL: a TCP proxy on 127.0.0.1 that reads the client's
//! MySQL packets (plaintext: connect with `ssl-mode=DISABLED`) and can, while it runs,
//! - swallow the reply to every n-th `COMMIT` after forwarding it (the server commits; the client
//!   sees its connection drop and cannot know the outcome), a given number of times;
//! - cut the connection right after forwarding a statement containing a given text (a batch
//!   cut mid-way: the server rolls the transaction back);
//! - delay every client packet;
//! - make the database unreachable (every connection cut, new ones closed at once).
//!
//! ```no_run
//! # async fn f() {
//! let proxy = testkit::proxy::FaultProxy::start("127.0.0.1:3306").await;
//! proxy.drop_commit_replies(4, 6);
//! # }
//! ```

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
};
use tokio_util::sync::CancellationToken;

/// MySQL's COM_QUERY and COM_STMT_PREPARE command bytes.
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;

#[derive(Debug, Default)]
struct Faults {
    commit_every: AtomicU32,
    commit_drops_left: AtomicU32,
    commits_seen: AtomicU64,
    /// Replies swallowed (COMMITs and cut statements).
    replies_dropped: AtomicU32,
    commit_replies_swallowed: AtomicU32,
    cut_needle: Mutex<Option<(String, u32)>>,
    cuts: AtomicU32,
    delay_ms: AtomicU64,
    unreachable: AtomicBool,
    /// Cancelled to cut every open connection.
    cut_all: Mutex<CancellationToken>,
}

/// The proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.faults
            .cut_all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
    }
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = tokio::net::lookup_host(upstream)
            .await
            .expect("resolving the proxy's upstream")
            .next()
            .expect("an upstream address");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let faults = Arc::new(Faults::default());
        let stop = CancellationToken::new();
        let (f, s) = (faults.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if f.unreachable.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let f = f.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, f).await;
                    }
                });
            }
        });
        FaultProxy { addr, faults, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// In front of the test server (`COINSTREAM_TEST_MYSQL_URL`).
    pub async fn for_test_server() -> Self {
        let url = super::test_mysql_url();
        let (_, host) = url
            .rsplit_once('@')
            .expect("a mysql://user:password@host URL");
        let host = host.split('/').next().unwrap_or(host);
        let host = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:3306")
        };
        Self::start(&host).await
    }

    /// `DATABASE_URL` of database `name` through the proxy for `user:password` (TLS off, so
    /// the proxy can read the packets).
    pub fn database_url(&self, user_and_password: &str, name: &str) -> String {
        format!(
            "mysql://{user_and_password}@{}/{name}?ssl-mode=DISABLED",
            self.addr
        )
    }

    /// `url` (`mysql://user:password@host:port/db`) pointed at the proxy instead, TLS off.
    pub fn url_via(&self, url: &str) -> String {
        let (head, rest) = url
            .split_once('@')
            .expect("a mysql://user:password@host URL");
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{head}@{}{path}?ssl-mode=DISABLED", self.addr)
    }

    /// `DATABASE_URL` of a test database through the proxy (the kit's account, TLS off).
    pub fn database_url_of(&self, db: &super::TestDb) -> String {
        let url = super::test_mysql_url();
        let user = url
            .trim_start_matches("mysql://")
            .rsplit_once('@')
            .map_or("", |(u, _)| u)
            .to_owned();
        self.database_url(&user, &db.name)
    }

    /// From now on, swallow the reply of every `every`-th COMMIT (after forwarding it), `times`
    /// times.
    pub fn drop_commit_replies(&self, every: u32, times: u32) {
        self.faults.commits_seen.store(0, Ordering::SeqCst);
        self.faults.commit_drops_left.store(times, Ordering::SeqCst);
        self.faults
            .commit_every
            .store(every.max(1), Ordering::SeqCst);
    }

    /// COMMIT replies swallowed so far.
    pub fn commit_replies_dropped(&self) -> u32 {
        self.faults.commit_replies_swallowed.load(Ordering::SeqCst)
    }

    /// COMMITs seen since [`FaultProxy::drop_commit_replies`].
    pub fn commits_seen(&self) -> u64 {
        self.faults.commits_seen.load(Ordering::SeqCst)
    }

    /// Cut the connection right after forwarding a statement containing `needle`, `times` times.
    pub fn cut_after_statement(&self, needle: &str, times: u32) {
        *self
            .faults
            .cut_needle
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((needle.to_owned(), times));
    }

    /// Connections cut by [`FaultProxy::cut_after_statement`] so far.
    pub fn cuts(&self) -> u32 {
        self.faults.cuts.load(Ordering::SeqCst)
    }

    /// Delays every client packet by `d`.
    pub fn delay(&self, d: Duration) {
        self.faults
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes the database unreachable (every open connection cut, new ones closed at once), or
    /// reachable again.
    pub fn unreachable(&self, on: bool) {
        self.faults.unreachable.store(on, Ordering::SeqCst);
        if on {
            let mut token = self
                .faults
                .cut_all
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            token.cancel();
            *token = CancellationToken::new();
        }
    }
}

/// Relays one connection until either side closes or a fault cuts it.
async fn relay(client: TcpStream, server: TcpStream, faults: Arc<Faults>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let cut = faults
        .cut_all
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .child_token();
    let swallow = Arc::new(AtomicBool::new(false));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = client_to_server(client_read, server_write, faults.clone(), swallow.clone());
    let down = server_to_client(server_read, client_write, faults, swallow, cut.clone());
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = up => {}
        _ = down => {}
    }
}

/// Forwards the client's packets, watching for COMMITs and statements to cut after.
async fn client_to_server(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: Arc<Faults>,
    swallow: Arc<AtomicBool>,
) {
    loop {
        let mut header = [0u8; 4];
        if from.read_exact(&mut header).await.is_err() {
            return;
        }
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let mut payload = vec![0u8; len];
        if from.read_exact(&mut payload).await.is_err() {
            return;
        }
        let delay = faults.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let statement = match payload.first() {
            Some(&COM_QUERY) | Some(&COM_STMT_PREPARE) => Some(&payload[1..]),
            _ => None,
        };
        if statement.is_some_and(is_commit) {
            let seen = faults.commits_seen.fetch_add(1, Ordering::SeqCst) + 1;
            let every = u64::from(faults.commit_every.load(Ordering::SeqCst));
            if every > 0 && seen % every == 0 && take_one(&faults.commit_drops_left) {
                faults
                    .commit_replies_swallowed
                    .fetch_add(1, Ordering::SeqCst);
                swallow.store(true, Ordering::SeqCst);
            }
        }
        if statement.is_some_and(|s| wants_cut(&faults, s)) {
            // The server gets the statement; its reply is swallowed and the connection cut.
            faults.cuts.fetch_add(1, Ordering::SeqCst);
            swallow.store(true, Ordering::SeqCst);
        }
        if to.write_all(&header).await.is_err() || to.write_all(&payload).await.is_err() {
            return;
        }
    }
}

/// Forwards the server's bytes, unless a COMMIT's reply is to be swallowed: then the
/// connection is cut instead.
async fn server_to_client(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: Arc<Faults>,
    swallow: Arc<AtomicBool>,
    cut: CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if swallow.load(Ordering::SeqCst) {
            faults.replies_dropped.fetch_add(1, Ordering::SeqCst);
            cut.cancel();
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn is_commit(statement: &[u8]) -> bool {
    let text = String::from_utf8_lossy(statement);
    text.trim()
        .trim_end_matches(';')
        .eq_ignore_ascii_case("commit")
}

fn wants_cut(faults: &Faults, statement: &[u8]) -> bool {
    let mut needle = faults.cut_needle.lock().unwrap_or_else(|p| p.into_inner());
    let Some((text, left)) = needle.as_mut() else {
        return false;
    };
    if *left == 0 || !String::from_utf8_lossy(statement).contains(text.as_str()) {
        return false;
    }
    *left -= 1;
    true
}

fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_commits() {
        assert!(is_commit(b"COMMIT"));
        assert!(is_commit(b" commit; "));
        assert!(!is_commit(b"COMMITTED"));
        assert!(!is_commit(b"SELECT 1"));
    }

    #[test]
    fn counts_down_to_zero() {
        let n = AtomicU32::new(2);
        assert!(take_one(&n) && take_one(&n));
        assert!(!take_one(&n));
    }
}
