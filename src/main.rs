//! Entry point: install the TLS crypto provider, parse the command line, run it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Exactly one rustls provider, installed before any client is built (STACK.md trap 1).
    let _ = rustls::crypto::ring::default_provider().install_default();
    vidu_gateway::cli::run(vidu_gateway::cli::Cli::parse())
}
