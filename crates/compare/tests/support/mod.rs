//! A TCP proxy in front of the test MySQL server that the test can take down and bring back:
//! the database "going away" for one process, without touching the server other tests share.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use common::testing::TestDb;
use tokio::{net::TcpListener, task::AbortHandle};

pub struct DbProxy {
    port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

/// `host:port` of the test server, from `COINSTREAM_TEST_MYSQL_URL` (`mysql://user:pw@host:port`).
fn upstream() -> String {
    let url = common::testing::test_mysql_url();
    let after_at = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
    let host = after_at.split('/').next().unwrap_or(after_at);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:3306")
    }
}

impl DbProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let upstream = upstream();
        let accept = {
            let (down, open) = (down.clone(), open.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: the connection closes at once
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    open.lock().unwrap().push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        DbProxy {
            port,
            down,
            open,
            accept,
        }
    }

    /// `DATABASE_URL` of `db` through the proxy, for the read-only account (`SELECT` only).
    pub fn reader_database_url(&self, db: &TestDb) -> String {
        db.reader_database_url()
            .replacen(&upstream(), &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Down: open connections cut, new ones closed at once. Up: connections pass again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for task in self.open.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_down(true);
    }
}
