//! The HTTP client for the real Vidu API: awc over rustls, HTTP/1.1, pooled per worker (idle connections closed
//! after `upstream.pool_idle_timeout_ms`), with connect and request timeouts. Sends only the gateway's own headers
//! (`Authorization: Token <key>`, content type, request id): nothing of the caller's headers reaches Vidu. Vidu's
//! answer is scrubbed of the enterprise key before it goes anywhere.
//!
//! A failed call is classified by whether any byte of the request may have reached Vidu (`classify`), not by how
//! the connection ended. A request that may have been delivered is never sent again; one that provably was not
//! (the kernel accepted not one byte of it) is sent once more, on a new connection.

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, Version};
use awc::error::{ConnectError, SendRequestError};
use bytes::Bytes;
use futures_util::Stream;
use memchr::memmem::Finder;

use super::connector::{WatchedConnector, counting_writes};
use super::exchange::{Endpoint, UpstreamError, UpstreamRequest, UpstreamResponse};
use super::stream::StreamedBody;
use crate::config::{LiveConfig, LoadedConfig, UpstreamSettings};
use crate::metrics::{EndpointLabels, Metrics};

/// Largest answer read from Vidu (task queries echo the payload, up to 1 MiB, plus creations).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Bodies larger than this are streamed to Vidu in `STREAM_SLICE` slices; smaller ones go in one write.
const STREAM_ABOVE: usize = 256 * 1024;
const STREAM_SLICE: usize = 128 * 1024;
/// What replaces the enterprise key wherever it appears in an answer.
const REDACTED: &[u8] = b"[REDACTED]";

pub struct ViduClient {
    /// Pooled connections: a connection idle for `upstream.pool_idle_timeout_ms` is closed, not reused.
    client: awc::Client,
    /// Never reuses a connection: for the one retry of a request that provably never left the gateway.
    fresh: awc::Client,
    /// `upstream.base_url` and `upstream.api_key` are read per call, so a reload that rotates the key applies at
    /// once; timeouts are fixed when the worker starts.
    config: Arc<LiveConfig>,
    /// Base URL, `Authorization` value and key finder of the configuration last used: rebuilt only when a reload
    /// has swapped the configuration, not formatted and validated again on every call.
    target: RefCell<Option<Rc<Target>>>,
    request_timeout: Duration,
}

struct Target {
    config: Arc<LoadedConfig>,
    base_url: String,
    authorization: HeaderValue,
    /// Finds the enterprise key in answers (none when the key is empty).
    key: Option<Finder<'static>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// On a pooled connection.
    First,
    /// The one retry of a request that provably never left the gateway: on a new connection.
    Again,
}

/// How one exchange failed, by what may have reached Vidu.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// No connection was made (or the request could not be built): nothing was written.
    NotConnected(String),
    /// A connection was there, but the kernel accepted not one byte of the request: nothing can have reached
    /// Vidu, and the request may be sent again.
    NotWritten(String),
    /// Some byte of the request may have reached Vidu, and no answer came: the task may exist.
    Broken(String),
    /// Some byte of the request may have reached Vidu, and no answer came in time: the task may exist.
    Timeout,
}

impl From<Failure> for UpstreamError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::NotConnected(why) | Failure::NotWritten(why) => UpstreamError::Connect(why),
            Failure::Broken(why) => UpstreamError::Broken(why),
            Failure::Timeout => UpstreamError::Timeout,
        }
    }
}

/// The rule that decides what a failed exchange means — whether any byte of the request may have been
/// delivered, never how the connection ended (`written`: bytes of this exchange the kernel accepted):
/// 1. Connecting failed (name resolution, TCP connect, TLS handshake, connect timeout: awc's `Connect` errors
///    other than `Disconnected`), or the request could not be built: nothing was written, nothing was created.
/// 2. Else, not one byte written: the connection failed on the request's first write (typically a pooled
///    connection that Vidu had closed or reset while it was idle). Nothing can have reached Vidu: nothing was
///    created, and the request may be sent again on a new connection. After a timeout, nothing was created
///    either (awc was still waiting for a connection), but the time is spent: no second attempt.
/// 3. Else some byte may have been delivered, so Vidu may have read the whole request and acted on it, however
///    the connection ended afterwards: a clean close (awc's `Disconnected`: end of stream before an answer), a
///    reset, a failed later write or a timeout all mean the task may exist.
///
/// With TLS a new connection's handshake counts as written, so a failure on a connection opened for this call
/// after its handshake falls under 3 even if no byte of the request was written yet: the safe side for money.
fn classify(e: SendRequestError, written: u64) -> Failure {
    match e {
        SendRequestError::Connect(ConnectError::Disconnected) => {}
        SendRequestError::Connect(c) => return Failure::NotConnected(c.to_string()),
        SendRequestError::Url(_) | SendRequestError::Http(_) => {
            return Failure::NotConnected(e.to_string());
        }
        _ => {}
    }
    match (written, e) {
        (0, SendRequestError::Timeout) => {
            Failure::NotConnected("no connection to Vidu within the request timeout".into())
        }
        (0, e) => Failure::NotWritten(e.to_string()),
        (_, SendRequestError::Timeout) => Failure::Timeout,
        (_, e) => Failure::Broken(e.to_string()),
    }
}

/// One awc client over [`WatchedConnector`], HTTP/1.1 only: awc writes an HTTP/1.1 request from the calling task,
/// so the bytes written for it can be counted (with HTTP/2 they are written by a shared connection task).
fn http_client(
    settings: &UpstreamSettings,
    keep_alive: Duration,
    request_timeout: Duration,
) -> awc::Client {
    let connector = awc::Connector::new()
        .connector(WatchedConnector::default())
        .max_http_version(Version::HTTP_11)
        .timeout(Duration::from_millis(settings.connect_timeout_ms))
        .conn_keep_alive(keep_alive)
        .limit(256);
    awc::Client::builder()
        .connector(connector)
        .timeout(request_timeout)
        .disable_redirects()
        .no_default_headers()
        .finish()
}

impl ViduClient {
    /// Built inside each worker (awc's client is not `Send`).
    pub fn new(config: Arc<LiveConfig>) -> anyhow::Result<Self> {
        let snapshot = config.current();
        let settings = &snapshot.settings.upstream;
        authorization(settings)?;
        let request_timeout = Duration::from_millis(settings.request_timeout_ms);
        let client = http_client(
            settings,
            Duration::from_millis(settings.pool_idle_timeout_ms),
            request_timeout,
        );
        let fresh = http_client(settings, Duration::ZERO, request_timeout);
        drop(snapshot);
        Ok(Self {
            client,
            fresh,
            config,
            target: RefCell::new(None),
            request_timeout,
        })
    }

    /// The URL for `path`, with the `Authorization` value and key finder, from the configuration in force.
    fn target(&self, path: &str) -> Result<(String, Rc<Target>), UpstreamError> {
        let current = self.config.current();
        let mut cached = self.target.borrow_mut();
        let fresh = cached
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.config, &current));
        if !fresh {
            let upstream = &current.settings.upstream;
            let authorization =
                authorization(upstream).map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let key = upstream.api_key.expose();
            *cached = Some(Rc::new(Target {
                base_url: upstream.base_url.as_str().trim_end_matches('/').to_owned(),
                authorization,
                key: (!key.is_empty()).then(|| Finder::new(key.as_bytes()).into_owned()),
                config: current,
            }));
        }
        let t = cached
            .as_ref()
            .ok_or_else(|| UpstreamError::Connect("no upstream configuration".into()))?;
        Ok((format!("{}{}", t.base_url, path), t.clone()))
    }

    pub async fn send(
        &self,
        req: UpstreamRequest,
        metrics: &Metrics,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let started = Instant::now();
        let (url, target) = self.target(&req.path)?;
        let first = self
            .exchange(Attempt::First, &req, &url, &target, self.request_timeout)
            .await;
        let mut answer = match first {
            Err(Failure::NotWritten(why)) => {
                tracing::warn!(
                    request_id = %req.request_id,
                    endpoint = req.endpoint.label(),
                    error = %why,
                    "a connection to Vidu failed before any byte of the request was written; sending it once \
                     more on a new connection"
                );
                let left = self.request_timeout.saturating_sub(started.elapsed());
                self.exchange(Attempt::Again, &req, &url, &target, left)
                    .await
            }
            other => other,
        }?;
        scrubbed(&mut answer, &target, req.endpoint, &req.request_id, metrics);
        Ok(answer)
    }

    /// A create whose body streams in while it is sent (`forward::stream`): on a new connection (there is no
    /// second attempt, since the body is not kept), `Content-Length` declared. Vidu's answer is waited for
    /// `upstream.request_timeout_ms` from the moment the last piece is released. A failure before the last piece
    /// was handed to the connection cannot have created anything: it is a `Connect` error, whatever happened.
    pub async fn send_streamed(
        &self,
        streamed: StreamedBody,
        request_id: &str,
        metrics: &Metrics,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (url, target) = self.target("/ent/v2/img2video")?;
        let StreamedBody {
            body,
            len,
            released,
        } = streamed;
        let last_out = body.last_out.clone();
        let builder = request(&self.fresh, Method::POST, &url, &target, request_id, true)
            // Bounded below, from the release of the last piece; the caller's upload is bounded by the body guard.
            .timeout(Duration::from_secs(24 * 3600))
            .force_close();
        let request_timeout = self.request_timeout;
        let deadline = async move {
            if released.await.is_err() {
                std::future::pending::<()>().await;
            }
            actix_web::rt::time::sleep(request_timeout).await;
        };
        let send = counting_writes(builder.send_body(SizedStream::new(len, body)));
        let not_whole = |why: String| {
            UpstreamError::Connect(format!(
                "the request to Vidu failed before its last byte was sent ({why}): nothing was created"
            ))
        };
        let (sent, written) =
            match futures_util::future::select(Box::pin(send), Box::pin(deadline)).await {
                futures_util::future::Either::Left((sent, _)) => sent,
                futures_util::future::Either::Right(_) if last_out.get() => {
                    return Err(UpstreamError::Timeout);
                }
                futures_util::future::Either::Right(_) => {
                    return Err(not_whole("Vidu did not take the body in time".into()));
                }
            };
        let res = match sent {
            Ok(res) => res,
            Err(e) if !last_out.get() => return Err(not_whole(e.to_string())),
            Err(e) => return Err(classify(e, written).into()),
        };
        let mut answer = read_answer(res, request_timeout).await?;
        scrubbed(
            &mut answer,
            &target,
            Endpoint::Img2Video,
            request_id,
            metrics,
        );
        Ok(answer)
    }

    /// One attempt: the request on a connection, and Vidu's whole answer, within `timeout`.
    async fn exchange(
        &self,
        attempt: Attempt,
        req: &UpstreamRequest,
        url: &str,
        target: &Target,
        timeout: Duration,
    ) -> Result<UpstreamResponse, Failure> {
        let started = Instant::now();
        let client = match attempt {
            Attempt::First => &self.client,
            Attempt::Again => &self.fresh,
        };
        let mut builder = request(
            client,
            req.method.clone(),
            url,
            target,
            &req.request_id,
            !req.body.is_empty(),
        )
        .timeout(timeout);
        if attempt == Attempt::Again {
            // A new connection, closed after this exchange: the retry leaves nothing idle behind.
            builder = builder.force_close();
        }
        let body = req.body.clone();
        let (sent, written) = counting_writes(async move {
            if body.len() > STREAM_ABOVE {
                builder.send_body(streamed(body)).await
            } else {
                builder.send_body(body).await
            }
        })
        .await;
        let res = sent.map_err(|e| classify(e, written))?;
        read_answer(res, timeout.saturating_sub(started.elapsed())).await
    }
}

/// A request to Vidu with the gateway's own headers and no other: the enterprise key, `Accept`, the request id,
/// and the content type when there is a body.
fn request(
    client: &awc::Client,
    method: Method,
    url: &str,
    target: &Target,
    request_id: &str,
    json_body: bool,
) -> awc::ClientRequest {
    let builder = client
        .request(method, url)
        .insert_header((header::AUTHORIZATION, target.authorization.clone()))
        .insert_header((header::ACCEPT, "application/json"))
        .insert_header(("x-request-id", request_id));
    if json_body {
        builder.insert_header((header::CONTENT_TYPE, "application/json"))
    } else {
        builder
    }
}

/// Vidu's whole answer (status, content type, body up to `MAX_RESPONSE_BYTES`), within `remaining`.
async fn read_answer<S>(
    mut res: awc::ClientResponse<S>,
    remaining: Duration,
) -> Result<UpstreamResponse, Failure>
where
    S: Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = actix_web::rt::time::timeout(remaining, res.body().limit(MAX_RESPONSE_BYTES))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| Failure::Broken(e.to_string()))?;
    Ok(UpstreamResponse {
        status,
        content_type,
        body,
    })
}

/// Replaces the enterprise key wherever it appears in Vidu's answer, counting and logging it.
fn scrubbed(
    answer: &mut UpstreamResponse,
    target: &Target,
    endpoint: Endpoint,
    request_id: &str,
    metrics: &Metrics,
) {
    if let Some(key) = &target.key
        && scrub_answer(answer, key)
    {
        tracing::warn!(
            request_id = %request_id,
            endpoint = endpoint.label(),
            "Vidu's answer contained the enterprise key; it was replaced with [REDACTED]"
        );
        metrics
            .upstream_secret_scrubbed
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.label(),
            })
            .inc();
    }
}

/// Replaces every occurrence of the key in the answer's body and headers (the content type is the one header
/// passed on); true when there was one. One `memmem` pass over the body; no copy when the key is absent.
fn scrub_answer(answer: &mut UpstreamResponse, key: &Finder<'_>) -> bool {
    let mut found = false;
    if let Some(clean) = scrub(&answer.body, key) {
        answer.body = Bytes::from(clean);
        found = true;
    }
    if let Some(ct) = &answer.content_type
        && let Some(clean) = scrub(ct.as_bytes(), key)
    {
        answer.content_type = Some(String::from_utf8_lossy(&clean).into_owned());
        found = true;
    }
    found
}

/// `haystack` with every occurrence of the finder's needle replaced by `[REDACTED]`; `None` when there is none.
fn scrub(haystack: &[u8], key: &Finder<'_>) -> Option<Vec<u8>> {
    let mut found = key.find_iter(haystack).peekable();
    found.peek()?;
    let needle = key.needle().len();
    let mut out = Vec::with_capacity(haystack.len());
    let mut at = 0;
    for start in found {
        out.extend_from_slice(&haystack[at..start]);
        out.extend_from_slice(REDACTED);
        at = start + needle;
    }
    out.extend_from_slice(&haystack[at..]);
    Some(out)
}

/// A large body is handed to awc in slices of the one buffer it was read into (no copy), with its length
/// declared: awc then holds one slice at a time in its write buffer instead of a second copy of the whole body.
fn streamed(body: Bytes) -> SizedStream<impl Stream<Item = Result<Bytes, Infallible>>> {
    let len = body.len();
    let slices = (0..len)
        .step_by(STREAM_SLICE)
        .map(move |at| Ok(body.slice(at..(at + STREAM_SLICE).min(len))));
    SizedStream::new(len as u64, futures_util::stream::iter(slices))
}

/// `Token <api_key>`, marked sensitive (never printed by the HTTP stack).
fn authorization(settings: &UpstreamSettings) -> anyhow::Result<HeaderValue> {
    let mut v =
        HeaderValue::from_str(&format!("Token {}", settings.api_key.expose())).map_err(|_| {
            anyhow::anyhow!("upstream.api_key contains characters not allowed in a header")
        })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn reset() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionReset)
    }

    #[test]
    fn a_failure_counts_as_delivered_once_any_byte_was_written_however_the_connection_ended() {
        // Connecting failed: nothing written, whatever the count says (a TLS handshake writes bytes).
        for e in [
            ConnectError::Timeout,
            ConnectError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            ConnectError::NoRecords,
        ] {
            assert!(matches!(
                classify(SendRequestError::Connect(e), 517),
                Failure::NotConnected(_)
            ));
        }
        // Not one byte accepted: nothing can have reached Vidu; worth one more try.
        assert!(matches!(
            classify(SendRequestError::Send(reset()), 0),
            Failure::NotWritten(_)
        ));
        assert!(matches!(
            classify(SendRequestError::Connect(ConnectError::Disconnected), 0),
            Failure::NotWritten(_)
        ));
        assert!(matches!(
            classify(SendRequestError::Timeout, 0),
            Failure::NotConnected(_)
        ));
        // Some byte written: a clean close (FIN), a reset, a failed later write and a timeout alike.
        for e in [
            SendRequestError::Connect(ConnectError::Disconnected),
            SendRequestError::Send(reset()),
            SendRequestError::Response(actix_web::error::ParseError::Io(reset())),
        ] {
            assert!(matches!(classify(e, 1), Failure::Broken(_)));
        }
        assert_eq!(classify(SendRequestError::Timeout, 300), Failure::Timeout);
    }

    #[test]
    fn scrub_replaces_every_occurrence_and_copies_nothing_without_one() {
        let key = Finder::new(b"sk-secret").into_owned();
        assert_eq!(scrub(b"{\"a\":1}", &key), None);
        assert_eq!(scrub(b"", &key), None);
        assert_eq!(
            scrub(b"Token sk-secret,sk-secretsk-secret; sk-secre", &key).unwrap(),
            b"Token [REDACTED],[REDACTED][REDACTED]; sk-secre".to_vec()
        );
        let mut answer = UpstreamResponse {
            status: actix_web::http::StatusCode::OK,
            content_type: Some("application/json; echo=sk-secret".into()),
            body: Bytes::from_static(b"{\"auth\":\"Token sk-secret\"}"),
        };
        assert!(scrub_answer(&mut answer, &key));
        assert_eq!(
            answer.body,
            Bytes::from_static(b"{\"auth\":\"Token [REDACTED]\"}")
        );
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/json; echo=[REDACTED]")
        );
        assert!(!scrub_answer(&mut answer, &key));
    }
}
