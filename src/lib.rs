//! vidu-gateway: the one company endpoint in front of Vidu's image-to-video API.

pub mod app_state;
pub mod auth;
pub mod body;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod create;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod request_context;
pub mod routes;
pub mod settle;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod usage;
pub mod validate;
pub mod vidu;
