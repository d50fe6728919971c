//! Black-box tests: the gateway on port 0 (in process or the real binary) against a mock Vidu that records
//! what it received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admission;
mod audit;
mod auth;
mod balance;
mod binary;
mod body;
mod cli;
mod dashboards;
mod deploy;
mod docs;
mod helpers;
mod idempotency;
mod kubernetes;
mod ledger_reads;
mod lifecycle;
mod live;
mod logs;
mod openapi;
mod proxy;
mod redis_link;
mod replicas;
mod running;
mod sandbox;
mod shadow;
mod state;
mod streaming;
mod upstream_faults;
mod validation;
