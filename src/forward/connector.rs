//! The TCP stream under every connection to Vidu, for what awc cannot tell: whether a pooled connection is still
//! open when it is reused, and whether any byte of a request left the gateway before an exchange failed.
//!
//! - **Liveness.** awc checks a pooled connection before reusing it by polling a read, but the runtime answers
//!   that poll from the readiness it last saw, so a FIN or RST that reached the socket since its I/O driver last
//!   ran looks like a live connection. A read the runtime would leave pending is therefore asked of the socket
//!   itself (one non-blocking `recv` on its descriptor): a closed or reset connection shows at once, and awc
//!   drops it instead of writing a create to it.
//! - **Bytes written.** [`counting_writes`] runs one exchange and reports how many bytes the kernel accepted on
//!   its connection while it ran (awc writes HTTP/1.1 requests from the caller's own task, so every write polled
//!   inside the exchange is attributed to it, and no other).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, IoSlice, Read};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use actix_web::dev::Service;
use actix_web::rt::net::{ActixStream, Ready, TcpStream};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// The bytes-written counter of the exchange being polled on this thread, if any.
    static EXCHANGE: RefCell<Option<Rc<Cell<u64>>>> = const { RefCell::new(None) };
}

/// Runs `exchange` and returns its output with the number of bytes the kernel accepted for it (0: not one byte
/// of the request can have reached the peer). With TLS the count includes a new connection's handshake.
pub async fn counting_writes<F: Future>(exchange: F) -> (F::Output, u64) {
    let written = Rc::new(Cell::new(0));
    let mut exchange = std::pin::pin!(exchange);
    let output = std::future::poll_fn(|cx| {
        let _scope = Scope::enter(&written);
        exchange.as_mut().poll(cx)
    })
    .await;
    (output, written.get())
}

/// Attributes writes to one exchange for the duration of one poll; restores the previous one on drop (a panic
/// included).
struct Scope(Option<Rc<Cell<u64>>>);

impl Scope {
    fn enter(written: &Rc<Cell<u64>>) -> Self {
        Self(EXCHANGE.with(|e| e.replace(Some(written.clone()))))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.0.take();
        EXCHANGE.with(|e| *e.borrow_mut() = previous);
    }
}

fn count_written(n: usize) {
    EXCHANGE.with(|e| {
        if let Some(w) = e.borrow().as_ref() {
            w.set(w.get().saturating_add(n as u64));
        }
    });
}

/// Most bytes one read past the runtime's readiness takes (a create's answer is a few hundred bytes).
const PROBE_BYTES: usize = 4096;

/// A TCP connection to Vidu (below TLS, when there is TLS).
#[derive(Debug)]
pub struct Watched(TcpStream);

impl Watched {
    /// The read the runtime left pending, asked of the socket directly (one non-blocking `recv` through the
    /// borrowed descriptor: the socket is non-blocking, and the read consumes what it returns as the runtime's
    /// would). `Pending` stands (the runtime registered the waker) unless the socket has data, an end of stream
    /// or an error to report.
    fn read_past_readiness(&self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(&self.0);
        let mut socket: &socket2::Socket = &socket;
        // Zeroed before the read (safe code reads into initialised memory only), so at most `PROBE_BYTES`: the
        // caller's buffer is often a fresh 8 KiB or more, and what is left is read by the next poll.
        let want = buf.remaining().min(PROBE_BYTES);
        match socket.read(buf.initialize_unfilled_to(want)) {
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Pending => self.read_past_readiness(buf),
            ready => ready,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            count_written(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            count_written(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl ActixStream for Watched {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_read_ready(&self.0, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_write_ready(&self.0, cx)
    }
}

/// awc's own TCP connector (resolver and connect), handing out [`Watched`] streams.
#[derive(Clone, Default)]
pub struct WatchedConnector(ConnectorService);

impl Service<ConnectInfo<Uri>> for WatchedConnector {
    type Response = Connection<Uri, Watched>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.0.call(req);
        Box::pin(async move {
            let (tcp, connection) = connecting.await?.replace_io(());
            Ok(connection.replace_io(Watched(tcp)).1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn only_writes_polled_inside_an_exchange_are_counted() {
        count_written(5);
        let ((), n) = counting_writes(async {
            count_written(3);
            actix_web::rt::task::yield_now().await;
            count_written(4);
        })
        .await;
        assert_eq!(n, 7);
        let ((), inner_outer) = counting_writes(async {
            let ((), inner) = counting_writes(async { count_written(2) }).await;
            assert_eq!(inner, 2);
            count_written(1);
        })
        .await;
        assert_eq!(inner_outer, 1, "a nested exchange keeps its own count");
    }

    /// A connected pair on loopback: the client side registered with the runtime, and the server side.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        let (server, _) = listener.accept().unwrap();
        (TcpStream::from_std(client).unwrap(), server)
    }

    fn poll_read(io: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut read = ReadBuf::new(buf);
        Pin::new(io)
            .poll_read(&mut cx, &mut read)
            .map_ok(|()| read.filled().len())
    }

    /// What awc's check before reusing a pooled connection sees after Vidu closed it, when the runtime's driver
    /// has not run since the FIN arrived (the worker was busy): the bare stream says "live", the watched one
    /// reports the data and the end of stream.
    #[actix_web::test]
    async fn a_close_the_runtime_has_not_seen_yet_is_read_from_the_socket() {
        use std::io::Write;
        let (plain, mut plain_server) = pair();
        let (tcp, mut server) = pair();
        let mut plain = plain;
        let mut watched = Watched(tcp);
        let mut buf = [0u8; 8];
        assert!(poll_read(&mut watched, &mut buf).is_pending(), "idle");
        for s in [&mut plain_server, &mut server] {
            s.write_all(b"hi").unwrap();
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }
        // No await since: the driver has not run.
        assert!(
            poll_read(&mut plain, &mut buf).is_pending(),
            "the runtime alone does not see the close (if this changes, the workaround may go)"
        );
        assert!(matches!(
            poll_read(&mut watched, &mut buf),
            Poll::Ready(Ok(2))
        ));
        assert_eq!(&buf[..2], b"hi");
        assert!(
            matches!(poll_read(&mut watched, &mut buf), Poll::Ready(Ok(0))),
            "end of stream"
        );
    }

    /// A read past the runtime's readiness takes at most `PROBE_BYTES` (it zeroes what it reads into); a longer
    /// answer is read whole over the polls that follow.
    #[actix_web::test]
    async fn a_long_answer_read_past_readiness_arrives_whole() {
        use std::io::Write;
        let (tcp, mut server) = pair();
        let mut watched = Watched(tcp);
        let sent: Vec<u8> = (0..3 * PROBE_BYTES + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        server.write_all(&sent).unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match poll_read(&mut watched, &mut buf) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => {
                    assert!(n <= PROBE_BYTES, "{n} bytes in one read past readiness");
                    got.extend_from_slice(&buf[..n]);
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => panic!("pending with data and an end of stream on the socket"),
            }
        }
        assert_eq!(got, sent);
    }
}
