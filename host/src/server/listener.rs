//! The webhook listener's connection handling: every connection gets a
//! header timeout (hyper's, which also bounds the wait for the next request
//! on a kept-alive connection) and an idle timeout (no byte read or written);
//! open connections are capped, and at the cap the longest-idle connection is
//! closed to make room, or, if none is idle, the newcomer is answered 503 at
//! once. Accepting never stops. Shutdown stops accepting and lets requests in
//! progress finish. With TLS, the handshake runs on the connection's own task
//! (never the accept loop), within the header timeout.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tower::ServiceExt as _;

use crate::config::FrontDoor;

/// How long connections may take to finish their requests after shutdown
/// begins (each is bounded by the body timeout and the database anyway).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// A connection must have been idle this long to be closed for a newcomer.
const EVICTABLE_AFTER: Duration = Duration::from_millis(200);

/// The answer to a connection past the cap when none can be closed for it.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 37\r\n\r\n{\"error\":\"too many open connections\"}";

/// One open connection, as the cap sees it.
#[derive(Debug)]
struct Conn {
    /// When a byte was last read or written (ms since the listener started).
    last_active_ms: AtomicU64,
    /// Requests being answered on it now: such a connection is never closed
    /// for a newcomer.
    busy: AtomicU64,
    /// Set and notified to close the connection for a newcomer.
    evicted: AtomicBool,
    evict: Notify,
}

/// The open connections.
#[derive(Debug)]
struct Conns {
    started: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    max: usize,
}

impl Conns {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Registers a connection, closing the longest-idle one if the cap is
    /// reached; `None` if nothing could be closed.
    fn admit(&self, id: u64) -> Option<Arc<Conn>> {
        let now = self.now_ms();
        let mut open = crate::sync::lock(&self.open);
        if open.len() >= self.max {
            let idlest = open
                .values()
                .filter(|c| !c.evicted.load(Ordering::Relaxed) && c.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed))
                .filter(|c| now.saturating_sub(c.last_active_ms.load(Ordering::Relaxed)) >= EVICTABLE_AFTER.as_millis() as u64)
                .cloned()?;
            idlest.evicted.store(true, Ordering::Relaxed);
            idlest.evict.notify_one();
        }
        let conn = Arc::new(Conn {
            last_active_ms: AtomicU64::new(now),
            busy: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        open.insert(id, conn.clone());
        Some(conn)
    }

    fn remove(&self, id: u64) {
        crate::sync::lock(&self.open).remove(&id);
    }
}

/// Serves `router` on `listener` with the front door's limits until
/// `shutdown` resolves.
/// With `tls`, each connection's handshake must finish within the header
/// timeout.
pub async fn serve(listener: TcpListener, router: Router, limits: FrontDoor, tls: Option<TlsAcceptor>, shutdown: impl Future<Output = ()>) {
    let conns = Arc::new(Conns {
        started: Instant::now(),
        open: Mutex::default(),
        max: limits.max_connections,
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: keep accepting after a breath.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and written whole: send them at once, without
        // waiting on the client's delayed ACK (Nagle).
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let Some(conn) = conns.admit(id) else {
            tracing::debug!(%peer, "connection refused: at the connection cap and none idle");
            tokio::spawn(refuse(stream));
            continue;
        };
        let idle = IdleStream::new(stream, limits.idle_timeout, conn.clone(), conns.clone());
        let (router, counted) = (router.clone(), conn.clone());
        let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let (router, counted) = (router.clone(), counted.clone());
            async move {
                counted.busy.fetch_add(1, Ordering::Relaxed);
                let response = router.oneshot(req).await;
                counted.busy.fetch_sub(1, Ordering::Relaxed);
                response
            }
        });
        let (http, watcher, conns, tls) = (http.clone(), graceful.watcher(), conns.clone(), tls.clone());
        tokio::spawn(async move {
            let io = match tls {
                None => Either::Left(idle),
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(idle)).await {
                    Ok(Ok(stream)) => Either::Right(stream),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        conns.remove(id);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not finished within the header timeout");
                        conns.remove(id);
                        return;
                    }
                },
            };
            let watched = watcher.watch(http.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                result = watched => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = conn.evict.notified() => {
                    tracing::debug!(%peer, "idle connection closed to make room for a new one");
                }
            }
            conns.remove(id);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {DRAIN_LIMIT:?} after shutdown began; closing them");
    }
}

/// Answers a connection past the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await
    })
    .await;
}

/// A TCP stream that fails with `TimedOut` once no byte has been read or
/// written for `idle`, and records its activity for the cap.
struct IdleStream {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl IdleStream {
    fn new(inner: TcpStream, idle: Duration, conn: Arc<Conn>, conns: Arc<Conns>) -> IdleStream {
        IdleStream {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            conn,
            conns,
        }
    }

    fn active(&mut self) {
        self.deadline.as_mut().reset(tokio::time::Instant::now() + self.idle);
        self.conn.last_active_ms.store(self.conns.now_ms(), Ordering::Relaxed);
    }

    /// A write's outcome: progress counts as activity; `Pending` past the
    /// idle deadline becomes `TimedOut`.
    fn wrote(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending_or_idle(cx),
        }
    }

    /// `Pending` becomes `TimedOut` once the idle deadline passes.
    fn pending_or_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for IdleStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.pending_or_idle(cx),
        }
    }
}

impl AsyncWrite for IdleStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.wrote(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
