//! Body guard: every request body is read under a deadline (`server.body_read_timeout_ms`, extended by
//! `server.body_min_bytes_per_sec`) and counted against `server.max_buffered_body_bytes` while its request runs.
//!
//! The middleware wraps the connection's payload in [`GuardedBody`]; a handler reads it as usual (`body::read`).
//! - **Deadline.** The clock starts when the handler first asks for the body. The next bytes must arrive by
//!   `min(last_progress + T, started + T + received / R)` (T = `body_read_timeout_ms`, R =
//!   `body_min_bytes_per_sec`; see [`deadline`]): a body may never pause longer than T, and past its first T it
//!   must average R bytes/s, so a body of N bytes takes at most T + N/R (Apache's `mod_reqtimeout` `MinRate`
//!   works the same way). Past it: 408 `RequestTimeout`, and the connection is closed.
//! - **Memory.** A body's bytes are reserved in one process-wide counter when its handler starts reading it (the
//!   declared `Content-Length` at once, a chunked body chunk by chunk), and given back when the request's handler
//!   has finished. A body that does not fit under `server.max_buffered_body_bytes` gets 503
//!   `ServiceUnavailable` with `Retry-After`, so bodies in memory stay under the cap whatever clients do.
//! - **Closing.** A response to a request whose body was not read to its end closes the connection: the
//!   unfinished payload rides along with the response body, so actix sees it unread (it would otherwise drain a
//!   chunked body for as long as the client keeps trickling).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::rt::time::{Instant, Sleep, sleep_until};
use actix_web::{Error, HttpMessage, web};
use bytes::Bytes;
use futures_util::Stream;

use crate::config::ServerSettings;
use crate::http::app_state::AppState;
use crate::http::error::GatewayError;

/// Bytes of request bodies buffered right now, across every worker and connection.
#[derive(Debug, Default)]
pub struct BufferedBodies {
    used: AtomicUsize,
}

impl BufferedBodies {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Bytes reserved by bodies being read or held by their requests.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if they fit under `cap`.
    fn try_take(&self, n: usize, cap: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= cap)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One request's share of [`BufferedBodies`]; given back when dropped.
struct Reservation {
    pool: Arc<BufferedBodies>,
    bytes: usize,
}

impl Reservation {
    fn grow(&mut self, n: usize, cap: usize) -> bool {
        let ok = self.pool.try_take(n, cap);
        if ok {
            self.bytes += n;
        }
        ok
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.give_back(self.bytes);
    }
}

/// The figures the guard enforces, read from the configuration in force when the request arrived.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub min_bytes_per_sec: u64,
    pub max_buffered: usize,
}

impl Limits {
    pub fn from_settings(s: &ServerSettings) -> Self {
        Self {
            timeout: Duration::from_millis(s.body_read_timeout_ms),
            min_bytes_per_sec: s.body_min_bytes_per_sec,
            max_buffered: s.max_buffered_body_bytes,
        }
    }

    /// What 503 answers say in `Retry-After`: bodies in memory finish or are cut off within about T.
    fn retry_after_secs(&self) -> u64 {
        self.timeout.as_millis().div_ceil(1000).max(1) as u64
    }
}

/// When the next bytes of a body must have arrived: never more than T after the last progress, and never later
/// than T plus 1/R s per byte received since reading started.
pub fn deadline(
    started: Instant,
    last_progress: Instant,
    received: u64,
    limits: &Limits,
) -> Instant {
    let idle = last_progress + limits.timeout;
    let earned = match limits.min_bytes_per_sec {
        0 => Duration::ZERO,
        rate => Duration::from_micros(received.saturating_mul(1_000_000) / rate),
    };
    idle.min(started + limits.timeout + earned)
}

/// What the middleware and the body stream share: the connection's payload and the request's reservation.
struct Shared {
    payload: Option<Payload>,
    finished: bool,
    reservation: Option<Reservation>,
}

/// The connection's payload, read under the deadline and the buffer cap.
pub struct GuardedBody {
    shared: Rc<RefCell<Shared>>,
    pool: Arc<BufferedBodies>,
    limits: Limits,
    declared: Option<usize>,
    /// (started, last progress), from the first poll.
    clock: Option<(Instant, Instant)>,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl GuardedBody {
    /// Reserves `n` bytes for this request; the 503 when they do not fit.
    fn reserve(&mut self, n: usize) -> Result<(), GatewayError> {
        let mut shared = self.shared.borrow_mut();
        let reservation = shared.reservation.get_or_insert_with(|| Reservation {
            pool: self.pool.clone(),
            bytes: 0,
        });
        if reservation.grow(n, self.limits.max_buffered) {
            return Ok(());
        }
        let held = reservation.bytes + n;
        Err(GatewayError::ServiceUnavailable {
            message: format!(
                "the gateway already holds as many request bodies in memory as it may (server.max_buffered_body_bytes \
                 = {} bytes, {} in use); this body of {held} bytes does not fit now — retry after the Retry-After delay",
                self.limits.max_buffered,
                self.pool.in_use()
            ),
            retry_after_secs: self.limits.retry_after_secs(),
        })
    }

    fn timed_out(&self, started: Instant, last: Instant, now: Instant) -> GatewayError {
        let t = self.limits.timeout.as_millis();
        let of = self
            .declared
            .map(|d| format!(" of {d}"))
            .unwrap_or_default();
        let message = if now.saturating_duration_since(last) >= self.limits.timeout {
            format!(
                "the request body stalled: nothing arrived for {t} ms after {}{of} bytes \
                 (server.body_read_timeout_ms); send the whole body without pausing",
                self.received
            )
        } else {
            format!(
                "the request body arrived too slowly: {}{of} bytes in {} ms; past the first {t} ms the gateway \
                 needs at least {} bytes per second (server.body_min_bytes_per_sec)",
                self.received,
                now.saturating_duration_since(started).as_millis(),
                self.limits.min_bytes_per_sec
            )
        };
        GatewayError::RequestTimeout(message)
    }

    fn fail(&mut self, e: GatewayError) -> Poll<Option<Result<Bytes, PayloadError>>> {
        self.done = true;
        self.timer = None;
        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::other(e)))))
    }
}

impl Stream for GuardedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let (started, last) = match this.clock {
            Some(c) => c,
            None => {
                let now = Instant::now();
                if let Some(n) = this.declared
                    && let Err(e) = this.reserve(n)
                {
                    return this.fail(e);
                }
                this.clock = Some((now, now));
                (now, now)
            }
        };
        let polled = {
            let mut shared = this.shared.borrow_mut();
            match shared.payload.as_mut() {
                Some(p) => Pin::new(p).poll_next(cx),
                None => Poll::Ready(None),
            }
        };
        match polled {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                this.clock = Some((started, Instant::now()));
                if this.declared.is_none()
                    && let Err(e) = this.reserve(chunk.len())
                {
                    return this.fail(e);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.timer = None;
                this.shared.borrow_mut().finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.timer = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                let due = deadline(started, last, this.received, &this.limits);
                let timer = this.timer.get_or_insert_with(|| Box::pin(sleep_until(due)));
                if timer.deadline() != due {
                    timer.as_mut().reset(due);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let e = this.timed_out(started, last, Instant::now());
                        this.fail(e)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// The gateway error a [`GuardedBody`] refused with, if `e` is one.
pub fn refusal(e: std::io::Error) -> Result<GatewayError, std::io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<GatewayError>()) {
        return Err(e);
    }
    match e.into_inner().map(|inner| inner.downcast::<GatewayError>()) {
        Some(Ok(g)) => Ok(*g),
        // Checked above; kept total rather than unwrapped.
        _ => Err(std::io::Error::other("the request body could not be read")),
    }
}

/// The middleware (outermost, so that it sees the final response body).
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let payload = req.take_payload();
    let guarded = if matches!(payload, Payload::None) {
        None // no body: nothing to guard (and no lookups on the hot path of GETs)
    } else {
        req.app_data::<web::Data<BufferedBodies>>()
            .cloned()
            .zip(req.app_data::<web::Data<AppState>>().cloned())
    };
    let Some((pool, state)) = guarded else {
        req.set_payload(payload);
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let limits = Limits::from_settings(&state.config.current().settings.server);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let shared = Rc::new(RefCell::new(Shared {
        payload: Some(payload),
        finished: false,
        reservation: None,
    }));
    let body = GuardedBody {
        shared: shared.clone(),
        pool: pool.into_inner(),
        limits,
        declared,
        clock: None,
        received: 0,
        timer: None,
        done: false,
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(body),
    });
    let res = next.call(req).await;
    let unfinished = {
        let mut shared = shared.borrow_mut();
        // The handler is done: its body buffers are gone.
        shared.reservation = None;
        if shared.finished {
            None
        } else {
            shared.payload.take()
        }
    };
    let res = res?;
    Ok(match unfinished {
        None => res.map_into_boxed_body(),
        Some(payload) => res.map_body(|_, body| {
            BoxBody::new(HoldPayload {
                body: body.boxed(),
                _payload: payload,
            })
        }),
    })
}

/// A response body that keeps the request's unfinished payload alive until it is sent, so actix closes the
/// connection after it instead of reading (draining) the rest of the body.
struct HoldPayload {
    body: BoxBody,
    _payload: Payload,
}

impl MessageBody for HoldPayload {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(timeout_ms: u64, rate: u64) -> Limits {
        Limits {
            timeout: Duration::from_millis(timeout_ms),
            min_bytes_per_sec: rate,
            max_buffered: 100,
        }
    }

    #[test]
    fn the_first_timeout_is_always_granted_then_bytes_earn_time_at_the_minimum_rate() {
        let t0 = Instant::now();
        let l = limits(1000, 1000);
        let ms = Duration::from_millis;
        assert_eq!(deadline(t0, t0, 0, &l), t0 + ms(1000));
        // 500 bytes earn 500 ms, but only while the body keeps moving.
        assert_eq!(deadline(t0, t0 + ms(900), 500, &l), t0 + ms(1500));
        assert_eq!(deadline(t0, t0 + ms(100), 500, &l), t0 + ms(1100));
        // A trickle earns next to nothing: 5 bytes at 1000 B/s = 5 ms.
        assert_eq!(deadline(t0, t0 + ms(950), 5, &l), t0 + ms(1005));
        // Rate 0: every body within the timeout.
        assert_eq!(
            deadline(t0, t0 + ms(900), 1_000_000, &limits(1000, 0)),
            t0 + ms(1000)
        );
    }

    #[test]
    fn a_steady_upload_above_the_minimum_rate_never_meets_its_deadline() {
        let t0 = Instant::now();
        let l = limits(1000, 64 * 1024);
        // 96 KiB/s in 8 KiB chunks every 83 ms, for 20 s.
        for i in 1..=240u64 {
            let at = t0 + Duration::from_millis(83 * i);
            let due = deadline(t0, at, 8 * 1024 * i, &l);
            assert!(due > at + Duration::from_millis(83), "chunk {i}");
        }
    }

    #[test]
    fn reservations_stay_under_the_cap_and_are_given_back_on_drop() {
        let pool = BufferedBodies::new();
        let mut a = Reservation {
            pool: pool.clone(),
            bytes: 0,
        };
        assert!(a.grow(60, 100));
        let mut b = Reservation {
            pool: pool.clone(),
            bytes: 0,
        };
        assert!(!b.grow(60, 100));
        assert!(b.grow(40, 100));
        assert_eq!(pool.in_use(), 100);
        drop(a);
        assert_eq!(pool.in_use(), 40);
        drop(b);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_refusal_survives_the_trip_through_the_payload_error() {
        let e = std::io::Error::other(GatewayError::RequestTimeout("slow".into()));
        assert!(matches!(refusal(e), Ok(GatewayError::RequestTimeout(m)) if m == "slow"));
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(refusal(other).is_err());
    }
}
