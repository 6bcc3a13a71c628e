//! The dashboard's connections: each carries a switch that closes it from the server's side. An
//! event stream whose client stopped taking events must be cut even while the server is blocked
//! writing to its full socket, where ending the response would never be noticed; a cut
//! connection's next read or write fails, and the server drops it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::connect_info::Connected, serve::IncomingStream};
use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Default)]
struct Switch {
    cut: AtomicBool,
    waker: AtomicWaker,
}

/// One connection, as its handlers see it (`ConnectInfo<Client>`).
#[derive(Debug, Clone)]
pub struct Client {
    switch: Arc<Switch>,
    pub addr: SocketAddr,
}

impl Client {
    /// Closes the connection: the server's next read or write on it fails (it is woken for that).
    pub fn cut(&self) {
        self.switch.cut.store(true, Ordering::SeqCst);
        self.switch.waker.wake();
    }
}

impl Connected<IncomingStream<'_, Listener>> for Client {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Client {
            switch: stream.io().switch.clone(),
            addr: *stream.remote_addr(),
        }
    }
}

/// A TCP connection that fails once its [`Client`] is cut.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    switch: Arc<Switch>,
}

impl Conn {
    fn cut(&self, cx: &Context<'_>) -> bool {
        self.switch.waker.register(cx.waker());
        self.switch.cut.load(Ordering::SeqCst)
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "cut by the server: the client did not take its events",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The dashboard's listener: TCP, each connection with its switch.
#[derive(Debug)]
pub struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((io, addr)) => {
                    let switch = Arc::default();
                    return (Conn { io, switch }, addr);
                }
                // The client went away before it was accepted.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of file descriptors, say: wait for some to close.
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
