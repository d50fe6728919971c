//! The command line: `serve`, `check-config`, `usage`, `token`, `healthcheck`.

mod healthcheck;
mod reservations;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, LoadedConfig, StateBackend, UpstreamMode};
use crate::startup::Application;

#[derive(Debug, Parser)]
#[command(
    name = "vidu-gateway",
    version,
    about = "The one company endpoint in front of Vidu's image-to-video API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (without --config: the built-in sandbox configuration).
    Serve {
        /// TOML configuration file; replaces the built-in one.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print it, secrets redacted; exits 1 when it is invalid.
    CheckConfig {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Usage from the state backend (the ledger file, or Redis): budgets, admitted and rejected requests, credits, per day.
    Usage {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Only this team.
        #[arg(long)]
        team: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// First day (YYYY-MM-DD), inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD), inclusive.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Reservations not settled: list the open and `unknown` ones, settle or release an `unknown` one by its id.
    Reservations {
        #[arg(long, value_name = "PATH", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: ReservationAction,
    },
    /// Mint a token signed with the configured HS secret (development and tests).
    Token {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The user (the `auth.user_claim` claim).
        #[arg(long)]
        sub: String,
        /// The team (the `auth.team_claim` claim).
        #[arg(long)]
        team: Option<String>,
        /// A role (the `auth.roles_claim` claim); repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds; negative mints an already expired token (tests), e.g. --ttl=-120.
        #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
        ttl: i64,
        /// Sign with this PEM private key (RSA → RS256, EC P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA)
        /// instead of the HS secret: tokens for a gateway configured with public keys (tests, benchmarks).
        #[arg(long, value_name = "PEM")]
        private_key: Option<PathBuf>,
        /// `kid` header to put in the token (with --private-key).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Exit 0 when the gateway answers 200 on /healthz, else 1 (container health checks: no shell or curl
    /// needed). Probes --url, else server.listen of the configuration (0.0.0.0 and [::] on loopback).
    Healthcheck {
        /// Configuration whose server.listen to probe (only that key is read; VIDU_GW__SERVER__LISTEN wins).
        #[arg(long, value_name = "PATH", conflicts_with = "url")]
        config: Option<PathBuf>,
        /// Probe this http:// URL instead, e.g. http://127.0.0.1:8080/healthz.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many milliseconds (connect, send and read together).
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReservationAction {
    /// Open (in flight) and `unknown` reservations, oldest first.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Vidu did create the task of an `unknown` reservation and charged CREDITS.
    Settle { id: String, credits: u64 },
    /// Nothing was created: give an `unknown` reservation back.
    Release { id: String },
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Usage {
            config,
            team,
            user,
            from,
            to,
            format,
        } => usage(config, team, user, from, to, format),
        Command::Reservations { config, action } => reservations::run(config, action),
        Command::Token {
            config,
            sub,
            team,
            roles,
            ttl,
            private_key,
            kid,
        } => token(config, &sub, team.as_deref(), &roles, ttl, private_key, kid),
        Command::Healthcheck {
            config,
            url,
            timeout_ms,
        } => health(config.as_deref(), url.as_deref(), timeout_ms),
    }
}

/// Writes a command's output to stdout. A reader that went away (`… | head -c 600`) ends the command quietly
/// with success: it has what it wanted. Any other write error is reported on stderr.
fn emit(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}

fn health(config_path: Option<&Path>, url: Option<&str>, timeout_ms: u64) -> ExitCode {
    let env_listen = std::env::var(format!("{}__SERVER__LISTEN", config::ENV_PREFIX)).ok();
    let target = match url {
        Some(url) => healthcheck::Target::from_url(url),
        None => healthcheck::listen_address(config_path, env_listen)
            .and_then(|listen| healthcheck::Target::from_listen(&listen)),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return ExitCode::from(1);
        }
    };
    let shown = format!("http://{}{}", target.authority, target.path);
    match healthcheck::probe(&target, Duration::from_millis(timeout_ms.max(1))) {
        Ok(200) => emit(&format!("healthy: {shown} answered 200\n")),
        Ok(status) => {
            eprintln!("unhealthy: {shown} answered {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unhealthy: {shown}: {e}");
            ExitCode::from(1)
        }
    }
}

fn load(path: Option<PathBuf>) -> Result<LoadedConfig, ExitCode> {
    config::load(path.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })
}

fn usage(
    path: Option<PathBuf>,
    team: Option<String>,
    user: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Format,
) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for d in [&from, &to].into_iter().flatten() {
        if d.parse::<jiff::civil::Date>().is_err() {
            eprintln!("error: {d:?} is not a date: use YYYY-MM-DD");
            return ExitCode::from(2);
        }
    }
    let subject = crate::usage::Subject { user, team };
    let report = match config.settings.state.backend {
        StateBackend::Memory => ledger_report(&config, &subject, from, to),
        StateBackend::Redis => redis_report(&config, &subject, from, to),
    };
    match report {
        Ok(r) => emit(&match format {
            Format::Table => crate::usage::to_table(&r),
            Format::Csv => crate::usage::to_csv(&r),
            Format::Json => format!("{}\n", serde_json::to_string_pretty(&r).unwrap_or_default()),
        }),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The memory backend's report: from the ledger file, read-only (safe beside a running gateway).
fn ledger_report(
    config: &LoadedConfig,
    subject: &crate::usage::Subject,
    from: Option<String>,
    to: Option<String>,
) -> Result<crate::usage::Report, String> {
    let ledger_path = &config.settings.state.ledger_path;
    if !ledger_path.exists() {
        return Err(missing_ledger(config, ledger_path));
    }
    let ledger =
        crate::state::ledger::Ledger::open_read_only(ledger_path).map_err(|e| format!("{e:#}"))?;
    crate::usage::report(
        &config.settings,
        &ledger,
        jiff::Timestamp::now(),
        subject,
        from,
        to,
    )
    .map_err(|e| format!("cannot read the ledger: {e}"))
}

/// The redis backend's report: the same keys the replicas' usage API reads.
fn redis_report(
    config: &LoadedConfig,
    subject: &crate::usage::Subject,
    from: Option<String>,
    to: Option<String>,
) -> Result<crate::usage::Report, String> {
    let settings = &config.settings;
    actix_web::rt::System::new().block_on(async {
        let store = crate::state::redis::RedisStore::open(
            &settings.state,
            settings.upstream.request_timeout_ms,
        )
        .map_err(|e| format!("{e:#}"))?;
        let unreadable = |e| format!("cannot read usage from Redis: {e}");
        let mut report =
            crate::usage::collect(settings, &store, jiff::Timestamp::now(), subject, from, to)
                .await
                .map_err(unreadable)?;
        let running = crate::state::Lifecycle::running(&store)
            .await
            .map_err(unreadable)?;
        crate::usage::add_running(&mut report, settings, subject, &running);
        Ok(report)
    })
}

/// Which file `usage` looked for and how to point it at the gateway's: a relative `state.ledger_path` is
/// resolved from the directory the command runs in, which need not be the gateway's.
fn missing_ledger(config: &LoadedConfig, ledger_path: &Path) -> String {
    let absolute = std::path::absolute(ledger_path).unwrap_or_else(|_| ledger_path.to_owned());
    let relative = if ledger_path.is_relative() {
        ", relative to the current directory"
    } else {
        ""
    };
    format!(
        "no ledger at {} (state.ledger_path = {:?} in {}{relative}): either the gateway has not served a \
         request with this configuration, or it runs with another one — pass --config with the gateway's \
         configuration file (and run from the gateway's working directory when its state.ledger_path is relative)",
        absolute.display(),
        ledger_path.display().to_string(),
        config.origin
    )
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    match load(path) {
        Ok(c) => {
            eprintln!("ok: {} is valid (version {})", c.origin, c.version);
            emit(&c.redacted_toml())
        }
        Err(code) => code,
    }
}

fn token(
    path: Option<PathBuf>,
    sub: &str,
    team: Option<&str>,
    roles: &[String],
    ttl: i64,
    private_key: Option<PathBuf>,
    kid: Option<String>,
) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let claims = crate::auth::mint::Claims {
        sub,
        team,
        roles,
        ttl_secs: ttl,
        now: jiff::Timestamp::now(),
    };
    let minted = match private_key {
        Some(pem) => {
            crate::auth::mint::mint_with_key(&config.settings.auth, &claims, &pem, kid.as_deref())
        }
        None => crate::auth::mint::mint(&config.settings.auth, &claims),
    };
    match minted {
        Ok(t) => emit(&format!("{t}\n")),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::telemetry::init(&config.settings.telemetry);
    if config.uses_dev_secret() {
        eprintln!(
            "\n  WARNING: tokens are verified with the DEVELOPMENT secret of the built-in configuration.\n  \
             Anyone can mint them. Use --config with your identity provider's keys for anything but local use.\n"
        );
        tracing::warn!("auth uses the built-in development HS256 secret");
    }
    if config.settings.upstream.mode == UpstreamMode::Sandbox {
        tracing::info!("upstream is the built-in sandbox: no Vidu calls, no cost");
    }
    let version = config.version.clone();
    let origin = config.origin.to_string();
    let result = actix_web::rt::System::new().block_on(async move {
        let memory = (config.settings.state.backend == StateBackend::Memory)
            .then(|| config.settings.state.ledger_path.clone());
        let app = Application::build(config)?;
        // One process per ledger, held until the process ends.
        let _ledger_lock = match memory {
            Some(path) => Some(crate::state::ledger::lock_for_this_process(&path)?),
            None => None,
        };
        #[cfg(unix)]
        actix_web::rt::spawn(crate::reload::on_sighup(app.state()));
        tracing::info!(port = app.port(), config = %origin, config_version = %version, "vidu-gateway listening");
        app.run_until_stopped().await?;
        tracing::info!("vidu-gateway stopped");
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            tracing::error!(error = %format!("{e:#}"), "cannot serve");
            ExitCode::from(1)
        }
    }
}
