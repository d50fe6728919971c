//! The HTTP client for the real Vidu API: awc over rustls, pooled per worker, with connect and request timeouts.
//! Sends only the gateway's own headers (`Authorization: Token <key>`, content type, request id): nothing of the
//! caller's headers reaches Vidu. Never retries.

use std::cell::RefCell;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use bytes::Bytes;
use futures_util::Stream;

use actix_web::http::header::{self, HeaderValue};
use awc::error::SendRequestError;

use super::upstream::{UpstreamError, UpstreamRequest, UpstreamResponse};
use std::sync::Arc;

use crate::config::{LiveConfig, LoadedConfig, UpstreamSettings};

/// Largest answer read from Vidu (task queries echo the payload, up to 1 MiB, plus creations).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Bodies larger than this are streamed to Vidu in `STREAM_SLICE` slices; smaller ones go in one write.
const STREAM_ABOVE: usize = 256 * 1024;
const STREAM_SLICE: usize = 128 * 1024;

pub struct ViduClient {
    client: awc::Client,
    /// `upstream.base_url` and `upstream.api_key` are read per call, so a reload that rotates the key applies at
    /// once; timeouts are fixed when the worker starts.
    config: Arc<LiveConfig>,
    /// Base URL and `Authorization` value of the configuration last used: rebuilt only when a reload has swapped
    /// the configuration, not formatted and validated again on every call.
    target: RefCell<Option<Target>>,
    request_timeout: Duration,
}

struct Target {
    config: Arc<LoadedConfig>,
    base_url: String,
    authorization: HeaderValue,
}

impl ViduClient {
    /// Built inside each worker (awc's client is not `Send`).
    pub fn new(config: Arc<LiveConfig>) -> anyhow::Result<Self> {
        let snapshot = config.current();
        let settings = &snapshot.settings.upstream;
        authorization(settings)?;
        let request_timeout = Duration::from_millis(settings.request_timeout_ms);
        let connector = awc::Connector::new()
            .timeout(Duration::from_millis(settings.connect_timeout_ms))
            .limit(256);
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(request_timeout)
            .disable_redirects()
            .no_default_headers()
            .finish();
        drop(snapshot);
        Ok(Self {
            client,
            config,
            target: RefCell::new(None),
            request_timeout,
        })
    }

    /// The URL for `path` and the `Authorization` value, from the configuration in force.
    fn target(&self, path: &str) -> Result<(String, HeaderValue), UpstreamError> {
        let current = self.config.current();
        let mut cached = self.target.borrow_mut();
        let fresh = cached
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.config, &current));
        if !fresh {
            let upstream = &current.settings.upstream;
            let authorization =
                authorization(upstream).map_err(|e| UpstreamError::Connect(e.to_string()))?;
            *cached = Some(Target {
                base_url: upstream.base_url.trim_end_matches('/').to_owned(),
                authorization,
                config: current,
            });
        }
        let t = cached
            .as_ref()
            .ok_or_else(|| UpstreamError::Connect("no upstream configuration".into()))?;
        Ok((format!("{}{path}", t.base_url), t.authorization.clone()))
    }

    pub async fn send(&self, req: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let started = Instant::now();
        let (url, auth) = self.target(&req.path)?;
        let mut builder = self
            .client
            .request(req.method, url)
            .insert_header((header::AUTHORIZATION, auth))
            .insert_header((header::ACCEPT, "application/json"))
            .insert_header(("x-request-id", req.request_id));
        if !req.body.is_empty() {
            builder = builder.insert_header((header::CONTENT_TYPE, "application/json"));
        }
        let sent = if req.body.len() > STREAM_ABOVE {
            builder.send_body(streamed(req.body))
        } else {
            builder.send_body(req.body)
        };
        let mut res = sent.await.map_err(|e| match e {
            SendRequestError::Timeout => UpstreamError::Timeout,
            SendRequestError::Connect(c) => UpstreamError::Connect(c.to_string()),
            other => UpstreamError::Broken(other.to_string()),
        })?;
        let status = res.status();
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let remaining = self.request_timeout.saturating_sub(started.elapsed());
        let body = actix_web::rt::time::timeout(remaining, res.body().limit(MAX_RESPONSE_BYTES))
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(|e| UpstreamError::Broken(e.to_string()))?;
        Ok(UpstreamResponse {
            status,
            content_type,
            body,
        })
    }
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
