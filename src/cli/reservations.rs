//! `vidu-gateway reservations list | settle ID CREDITS | release ID`: the admins' view of reservations not settled,
//! from the command line. On Redis every action is the store's atomic script, safe beside running replicas. On the
//! memory backend the running gateway owns the ledger (it holds the ledger's process lock): `list` reads it
//! read-only beside it, and `settle`/`release` take the lock, so they work only while no gateway serves it (else
//! they say to use the admin API, which the running gateway applies).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Format, ReservationAction, emit, load, missing_ledger};
use crate::config::{LoadedConfig, StateBackend};
use crate::state::ledger::Ledger;
use crate::state::{Lifecycle, ReservationView, Resolution};

pub fn run(config: Option<PathBuf>, action: ReservationAction) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = actix_web::rt::System::new().block_on(act(&config, action));
    match result {
        Ok(text) => emit(&text),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn act(config: &LoadedConfig, action: ReservationAction) -> Result<String, String> {
    let settings = &config.settings;
    match settings.state.backend {
        StateBackend::Redis => {
            let store = crate::state::redis::RedisStore::open(
                &settings.state,
                settings.upstream.request_timeout_ms,
            )
            .map_err(|e| format!("{e:#}"))?;
            apply(&store, action).await
        }
        StateBackend::Memory => {
            let ledger_path = &settings.state.ledger_path;
            if !ledger_path.exists() {
                return Err(missing_ledger(config, ledger_path));
            }
            if let ReservationAction::List { format } = action {
                let ledger = Ledger::open_read_only(ledger_path).map_err(|e| format!("{e:#}"))?;
                let rows = ledger
                    .unsettled_reservations()
                    .map_err(|e| format!("cannot read the ledger: {e}"))?;
                let list: Vec<ReservationView> = rows.into_iter().map(|u| u.view()).collect();
                return Ok(render(&list, format));
            }
            // Held while the command writes: a running gateway holds it, and one starting now waits for nothing.
            let _lock = crate::state::ledger::lock_for_this_process(ledger_path).map_err(|_| {
                format!(
                    "a gateway is serving {} and keeps its budgets in memory: resolve the reservation through it, \
                     as an admin — POST /gateway/v1/reservations/{{id}}/settle with {{\"credits\": N}}, or …/release \
                     — or stop it first",
                    ledger_path.display()
                )
            })?;
            let store = crate::state::memory::MemoryStore::open(
                ledger_path,
                std::sync::Arc::new(crate::clock::SystemClock),
                Default::default(),
            )
            .map_err(|e| format!("{e:#}"))?;
            let out = apply(&store, action).await;
            crate::state::Health::flush(&store)
                .await
                .map_err(|e| format!("the ledger could not be written: {e}"))?;
            out
        }
    }
}

async fn apply<S: Lifecycle + crate::state::Audit>(
    store: &S,
    action: ReservationAction,
) -> Result<String, String> {
    let unreachable =
        |e: crate::state::StoreError| format!("the state backend cannot be reached: {e}");
    let (id, how) = match action {
        ReservationAction::List { format } => {
            let list = store.reservations().await.map_err(unreachable)?;
            return Ok(render(&list, format));
        }
        ReservationAction::Settle { id, credits } => (id, Resolution::Settle(credits)),
        ReservationAction::Release { id } => (id, Resolution::Release),
    };
    match store.resolve(&id, how).await.map_err(unreachable)? {
        Some(r) => {
            let done = match how {
                Resolution::Settle(n) => format!("settled at {n} credits"),
                Resolution::Release => "released".to_owned(),
            };
            let (kind, credits) = match how {
                Resolution::Settle(n) => ("reservation_settled", n),
                Resolution::Release => ("reservation_released", 0),
            };
            let actor = format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            );
            let entry = crate::audit::entry(
                jiff::Timestamp::now(),
                kind,
                &actor,
                "ok",
                serde_json::json!({
                    "id": r.id, "request_id": r.request_id, "user": r.user, "team": r.team,
                    "estimate": r.estimate, "credits": credits,
                }),
            );
            crate::audit::keep(store, entry).await;
            Ok(format!(
                "{} ({} of {}, estimate {}, {}): {done}\n",
                r.id, r.user, r.team, r.estimate, r.created_at
            ))
        }
        None => Err(format!(
            "no unknown reservation has the id {id:?}: `vidu-gateway reservations list` shows them"
        )),
    }
}

fn render(list: &[ReservationView], format: Format) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(list).unwrap_or_default()
        ),
        Format::Csv => {
            let mut out =
                String::from("id,state,user,team,model,off_peak,estimate,created_at,request_id\n");
            for r in list {
                let f = crate::usage::csv_field;
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{}\n",
                    f(&r.id),
                    r.state,
                    f(&r.user),
                    f(&r.team),
                    f(&r.model),
                    r.off_peak,
                    r.estimate,
                    r.created_at,
                    f(&r.request_id)
                ));
            }
            out
        }
        Format::Table => {
            if list.is_empty() {
                return "no open or unknown reservations\n".into();
            }
            let mut out = format!(
                "{:<38} {:<8} {:<16} {:<12} {:>8}  {}\n",
                "id", "state", "user", "team", "estimate", "created_at"
            );
            for r in list {
                out.push_str(&format!(
                    "{:<38} {:<8} {:<16} {:<12} {:>8}  {}\n",
                    r.id, r.state, r.user, r.team, r.estimate, r.created_at
                ));
            }
            out
        }
    }
}
