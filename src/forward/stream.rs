//! Large creates forwarded while they are read and checked: as soon as the caller's body reaches its `images`
//! value, a request to Vidu starts (on a new connection, its `Content-Length` declared), the body's bytes so far
//! go out, then the value's bytes as they arrive; the rest of the body is kept (it is small) and sent last, once
//! validation and admission have both passed. A create refused on the way (invalid body, a limit, a replayed idempotency key), or
//! whose caller hangs up or stalls, is aborted before that last part: the connection to Vidu is closed with the
//! body incomplete, so Vidu never receives a whole request and nothing is created or charged.
//!
//! Vidu receives the caller's bytes as they are, unless the gateway changes a field: a change can only be in the
//! part sent last (a body whose first part holds a field the gateway may change is not streamed, see
//! `validate::scan::Holds`), and when it makes the body shorter than declared, spaces after the closing `}` make
//! up the length (`Validated::streamed_tail`). The length declared is the caller's plus what the fields the
//! gateway may add could take (nothing, unless relaying callbacks or a policy that moves creates off-peak).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::web;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::exchange::{UpstreamError, UpstreamResponse};
use crate::http::error::GatewayError;
use crate::validate::scan::{BodyScanner, Holds, Scanned};

/// Bodies declaring at least this many bytes are forwarded while they are read (smaller ones are read whole
/// first: they take no longer to read than the first round trip to Vidu would).
pub const STREAM_FROM: usize = 256 * 1024;

/// Pieces of the body waiting for the connection to Vidu to take them (each at most one read of the caller's
/// connection): the body's memory per request while it streams, beside awc's write buffer.
const QUEUED_PIECES: usize = 8;

/// A piece of the body on its way to awc.
enum Piece {
    More(Bytes),
    /// The end: after it the body is complete.
    Last(Bytes),
}

/// The body as awc sends it. If the sender goes away before the last piece, the stream fails: awc then drops
/// the connection without writing another byte, and Vidu sees a request that never ended.
pub struct BodyStream {
    rx: mpsc::Receiver<Piece>,
    ended: bool,
    /// Set when the last piece has been handed to awc (it may then reach Vidu).
    pub last_out: Rc<Cell<bool>>,
    /// Set when the stream failed because its sender went away (a refused or abandoned create).
    pub aborted: Rc<Cell<bool>>,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::More(b))) => Poll::Ready(Some(Ok(b))),
            Poll::Ready(Some(Piece::Last(b))) => {
                self.ended = true;
                self.last_out.set(true);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(None) => {
                self.ended = true;
                self.aborted.set(true);
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the create was stopped before the end of its body",
                ))))
            }
        }
    }
}

/// What the upstream task needs to send a streamed body: the stream, its declared length, and the signal that
/// the last piece is on its way (Vidu's answer is waited for from then on, for `upstream.request_timeout_ms`).
pub struct StreamedBody {
    pub body: BodyStream,
    pub len: u64,
    pub released: oneshot::Receiver<()>,
}

/// The gateway's end of a streamed create: pieces go in, Vidu's answer comes out. Dropping it aborts the request.
pub struct Outgoing {
    tx: mpsc::Sender<Piece>,
    released: oneshot::Sender<()>,
    answer: oneshot::Receiver<Result<UpstreamResponse, UpstreamError>>,
    /// Bytes declared to Vidu and bytes queued so far.
    len: u64,
    queued: u64,
}

impl Outgoing {
    /// A new streamed request of `len` bytes. `start` spawns the exchange with the [`StreamedBody`] and sends its
    /// outcome to the given channel.
    pub fn start(
        len: u64,
        start: impl FnOnce(StreamedBody, oneshot::Sender<Result<UpstreamResponse, UpstreamError>>),
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED_PIECES);
        let (released, released_rx) = oneshot::channel();
        let (answer_tx, answer) = oneshot::channel();
        let body = BodyStream {
            rx,
            ended: false,
            last_out: Rc::default(),
            aborted: Rc::default(),
        };
        start(
            StreamedBody {
                body,
                len,
                released: released_rx,
            },
            answer_tx,
        );
        Self {
            tx,
            released,
            answer,
            len,
            queued: 0,
        }
    }

    /// Bytes that may still be sent, the last piece included.
    pub fn room(&self) -> u64 {
        self.len - self.queued
    }

    /// Queues a piece, waiting while Vidu's connection is behind (so a fast caller is slowed to what Vidu
    /// takes). A piece for a request that already failed is dropped: its outcome is in the answer.
    async fn more(&mut self, piece: Bytes) {
        self.queued += piece.len() as u64;
        let _ = self.tx.send(Piece::More(piece)).await;
    }

    /// Sends the last piece (which must fill the declared length exactly) and waits for Vidu's answer.
    pub async fn finish(self, last: Bytes) -> Result<UpstreamResponse, UpstreamError> {
        if self.queued + last.len() as u64 != self.len {
            // Never send a body of another length than declared: stop the request instead.
            drop(self.tx);
            return Err(UpstreamError::Connect(format!(
                "the streamed body came to {} bytes against {} declared; the request was stopped",
                self.queued + last.len() as u64,
                self.len
            )));
        }
        let _ = self.tx.send(Piece::Last(last)).await;
        let _ = self.released.send(());
        self.answer.await.unwrap_or_else(|_| {
            Err(UpstreamError::Broken(
                "the upstream call was aborted".into(),
            ))
        })
    }
}

/// A body read to its end while its `images` value was being forwarded.
pub struct Received {
    pub scanned: Scanned,
    /// SHA-256 of the caller's bytes, when asked for (an `Idempotency-Key`).
    pub hash: Option<[u8; 32]>,
    /// The request to Vidu, when the body reached an `images` array.
    pub outgoing: Option<Outgoing>,
}

/// Reads `payload` (declaring `declared` bytes, at most `limit`), passing the body to the request that `start`
/// opens (of `declared + growth` bytes) as soon as the `images` value begins (unless the first part `holds`).
pub async fn receive(
    mut payload: web::Payload,
    declared: usize,
    limit: usize,
    growth: usize,
    holds: Holds,
    hash: bool,
    mut start: impl FnMut(u64) -> Outgoing,
) -> Result<Received, GatewayError> {
    let mut scanner = BodyScanner::new(holds, declared);
    let mut hasher = hash.then(Sha256::new);
    let mut outgoing: Option<Outgoing> = None;
    let mut read = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| crate::read::payload_error(e, limit))?;
        read += chunk.len();
        if read > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        let forward = scanner.feed(&chunk);
        if forward.is_empty() {
            continue;
        }
        let out = match outgoing.as_mut() {
            Some(out) => out,
            None => {
                let mut out = start(declared.saturating_add(growth) as u64);
                out.more(Bytes::copy_from_slice(scanner.head())).await;
                outgoing.insert(out)
            }
        };
        out.more(chunk.slice(forward)).await;
    }
    Ok(Received {
        scanned: scanner.finish(),
        hash: hasher.map(|h| h.finalize().into()),
        outgoing,
    })
}
