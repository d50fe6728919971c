//! The Vidu domain: the catalog, pricing, and the upstream (the real API, or the built-in sandbox).

pub mod catalog;
pub mod client;
pub mod image;
pub mod pricing;
pub mod request;
pub mod sandbox;
pub mod upstream;
mod wire;
