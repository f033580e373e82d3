//! The black hole: for a while, the double accepts requests, records them, and never answers
//! (see `docs/ec2-semantics.md`, "Faults in time"). It models an EC2 endpoint that is
//! unreachable mid-request (a network partition, a stuck load balancer): the client's own
//! timeouts are all it has.
//!
//! A swallowed request's handler waits (without the shared state's lock) until the black hole
//! ends, then cuts its connection instead of answering: the response is never written, the
//! socket is closed. So a client whose timeout is shorter than the black hole sees a timeout;
//! one that waits longer sees the connection closed without a response (never an answer, and
//! the request is not carried out). To cut a connection from its handler, the server accepts
//! through [`Listener`], whose connections ([`CuttableStream`]) fail every read and write once
//! their [`Connection`] handle is cut.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Ec2Double;
use super::state::{Shared, SharedState, lock};

/// How often a swallowed request looks whether the black hole has ended (or was ended early by
/// [`Ec2Double::calm`]).
const POLL: Duration = Duration::from_millis(50);

impl Ec2Double {
    /// For `duration` from now, every request (any action, parseable or not) is accepted and
    /// recorded but never answered: when the black hole ends, its connection is closed without
    /// a response. A later call moves the end (also for requests already swallowed);
    /// [`Ec2Double::calm`] ends it now. Other doubles are not affected, nor are the test's calls
    /// on this one (the handlers wait without holding the double's lock).
    pub fn black_hole(&self, duration: Duration) {
        self.shared().black_hole_until = Some(Instant::now() + duration);
    }
}

/// Whether a request that arrives at `now` is swallowed.
pub(super) fn swallows(shared: &Shared, now: Instant) -> bool {
    shared.black_hole_until.is_some_and(|until| until > now)
}

/// What a swallowed request's handler does: waits until the black hole ends, then cuts the
/// connection. The returned response is never written.
pub(super) async fn swallow(state: &SharedState, connection: &Connection) -> Response {
    loop {
        // The guard is a temporary: the lock is released before the sleep.
        let until = lock(state).black_hole_until;
        let now = Instant::now();
        match until {
            Some(until) if until > now => tokio::time::sleep((until - now).min(POLL)).await,
            _ => break,
        }
    }
    connection.cut();
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// The double's listener: a TCP listener whose connections can be cut by their handlers.
pub(super) struct Listener(pub(super) tokio::net::TcpListener);

impl axum::serve::Listener for Listener {
    type Io = CuttableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let cut = Arc::new(AtomicBool::new(false));
                    return (CuttableStream { stream, cut }, addr);
                }
                Err(e) => {
                    // E.g. out of file descriptors: keep listening, try again shortly.
                    eprintln!("ec2 double: accept: {e}");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A handler's handle on its connection (axum's `ConnectInfo`).
#[derive(Clone, Debug)]
pub(super) struct Connection {
    cut: Arc<AtomicBool>,
}

impl Connection {
    /// Every later read and write of the connection fails, so the server drops it.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, Listener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Connection {
        Connection {
            cut: stream.io().cut.clone(),
        }
    }
}

/// An accepted TCP connection that fails all IO once cut.
pub(super) struct CuttableStream {
    stream: TcpStream,
    cut: Arc<AtomicBool>,
}

impl CuttableStream {
    fn check(&self) -> io::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "cut by the ec2 double's black hole",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for CuttableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
