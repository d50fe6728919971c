//! The Vidu upstream: the real API's client, or the built-in sandbox.

pub mod client;
pub mod sandbox;
pub mod upstream;
mod wire;
