//! vidu-gateway: the one company endpoint in front of Vidu's image-to-video API.
//!
//! A create runs through modules named after its phases: `read` → `auth` (authenticate) → `validate` → `policy`
//! → `admit` → `forward` → `settle`, put together by `flow`, behind the HTTP edge `http`. See ARCHITECTURE.md.

pub mod admit;
pub mod audit;
pub mod auth;
pub mod balance;
pub mod callbacks;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod flow;
pub mod forward;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod policy;
pub mod read;
pub mod reload;
pub mod replicas;
pub mod settle;
pub mod startup;
pub mod state;
pub mod tasks;
pub mod telemetry;
pub mod usage;
pub mod validate;
