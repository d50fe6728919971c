//! Forwarding to Vidu: the body as it is sent (`rewrite`; large creates while they arrive, `stream`), the wire types of one exchange (`exchange`), and the
//! two upstreams behind them — the real API's client (`client`, over the `connector` that watches pooled
//! connections) and the built-in sandbox (`sandbox`) — chosen once at start (`upstream`).

pub mod client;
mod connector;
pub mod exchange;
pub mod rewrite;
pub mod sandbox;
pub mod stream;
pub mod upstream;
