//! Forwarding to Vidu: the body as it is sent.

pub mod rewrite;
