//! The wire types of one exchange with Vidu — which endpoint, the request as sent, the answer, how it failed — a
//! leaf that the client, the sandbox and the upstream switch all build on (so none of them depends on another).

use actix_web::http::{Method, StatusCode};
use bytes::Bytes;

/// Which Vidu endpoint a call is for (metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Img2Video,
    TaskCreations,
    TaskCancel,
    Credits,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Img2Video => "img2video",
            Endpoint::TaskCreations => "task_creations",
            Endpoint::TaskCancel => "task_cancel",
            Endpoint::Credits => "credits",
        }
    }
}

/// A call to Vidu: path relative to `upstream.base_url`, and the exact body bytes to send.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub endpoint: Endpoint,
    pub method: Method,
    pub path: String,
    pub body: Bytes,
    pub request_id: String,
}

/// Vidu's answer, passed back to the caller unchanged.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Not one byte of the request left the gateway (connecting failed, or the connection failed on the first
    /// write): nothing was created.
    #[error("cannot connect to Vidu: {0}")]
    Connect(String),
    /// Some byte of the request may have reached Vidu and no answer came (a reset, or a clean close alike): the
    /// task may exist.
    #[error("the connection to Vidu failed after the request was sent: {0}")]
    Broken(String),
    /// No (complete) answer in time: the task may exist.
    #[error("Vidu did not answer in time")]
    Timeout,
}
