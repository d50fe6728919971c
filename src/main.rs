//! Entry point: install the TLS crypto provider, parse the command line, run it.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: per-thread free lists instead of glibc's arenas. Measured on the request path (bench/PROFILE.md):
/// about 10 µs less CPU per small request, and large bodies reuse their memory instead of faulting it in again.
/// Built with `no_thp`: with transparent huge pages each thread's first touch took a 2 MiB page (idle RSS 24
/// instead of 14 MiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Exactly one rustls provider, installed before any client is built (with two providers compiled in, rustls panics at the first TLS connection unless one is installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Likewise for JWT signatures, before jsonwebtoken's first use picks its default.
    vidu_gateway::auth::crypto::install();
    vidu_gateway::cli::run(vidu_gateway::cli::Cli::parse())
}
