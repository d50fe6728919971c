//! `Application`: binds the listeners (port 0 in tests), builds the shared state and the App (middleware order,
//! routes), and runs until SIGTERM/SIGINT, finishing in-flight requests within `server.shutdown_timeout_secs`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::auth::Authenticator;
use crate::balance::BalanceWatch;
use crate::clock::{AlignedClock, SharedClock, SystemClock};
use crate::config::{LiveConfig, LoadedConfig, OnUnavailable, StateBackend, UpstreamMode};
use crate::forward::client::ViduClient;
use crate::forward::sandbox::Sandbox;
use crate::forward::upstream::Upstream;
use crate::http::app_state::AppState;
use crate::http::openapi::ApiDocument;
use crate::http::request_context::request_context;
use crate::http::routes;
use crate::metrics::Metrics;
use crate::read::{self, guard::BufferedBodies};
use crate::replicas::ReplicaView;
use crate::state::Store;
use crate::state::fail_open::FailOpen;
use crate::state::memory::MemoryStore;
use crate::state::redis::RedisStore;
use crate::state::spool::Spool;
use crate::tasks::reconciler::Reconciler;
use crate::tasks::relay::Relay;
use crate::telemetry::GatewayRootSpan;

/// Time a client has to send a request's head (line and headers).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a closing connection may linger, reading and discarding, before it is shut down.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What tests (and embedders) may replace.
#[derive(Clone)]
pub struct Options {
    pub clock: SharedClock,
    /// The Redis backend's scripts read `clock` instead of Redis's `TIME` (tests on a manual clock only).
    pub state_reads_clock: bool,
    /// How often this replica publishes its config version to the state backend.
    pub heartbeat_every: Duration,
    /// How often the reconciler looks for tasks to query (unknown reservations: every 10 of these).
    pub reconcile_every: Duration,
    /// How often the relay looks at its outbox.
    pub relay_every: Duration,
    /// Reads the Vidu balance this often instead of every `balance.poll_secs` (tests; `balance.poll_secs = 0`
    /// still turns the watch off).
    pub balance_every: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            state_reads_clock: false,
            heartbeat_every: crate::replicas::HEARTBEAT_EVERY,
            reconcile_every: crate::tasks::reconciler::TICK,
            relay_every: crate::tasks::relay::TICK,
            balance_every: None,
        }
    }
}

/// The backend behind `state.on_unavailable`, with the spool: opened on the redis backend (settlements Redis could
/// not take wait there), when the rule is `fail_open`, or when a spool file is left from an earlier run; written
/// back while the process runs.
fn fail_open<S: Store + 'static>(
    store: S,
    live: &Arc<LiveConfig>,
    metrics: &Metrics,
) -> anyhow::Result<Arc<dyn Store>> {
    let config = live.clone();
    let rule = move || config.current().settings.state.on_unavailable;
    let settings = &live.current().settings.state;
    let store = FailOpen::new(store, rule, metrics.admissions_unaccounted.clone());
    let store = if settings.backend == StateBackend::Redis
        || settings.on_unavailable == OnUnavailable::FailOpen
        || settings.spool_path.exists()
    {
        let spool = Spool::open(&settings.spool_path, metrics.state_spool_depth.clone())?;
        Arc::new(store.with_spool(Arc::new(spool)))
    } else {
        Arc::new(store)
    };
    actix_web::rt::spawn(store.clone().write_back());
    Ok(store)
}

pub struct Application {
    server: Server,
    metrics_server: Option<Server>,
    port: u16,
    metrics_port: Option<u16>,
    state: web::Data<AppState>,
}

impl Application {
    pub fn build(config: LoadedConfig) -> anyhow::Result<Self> {
        Self::build_with(config, Options::default())
    }

    pub fn build_with(config: LoadedConfig, options: Options) -> anyhow::Result<Self> {
        let settings = config.settings.clone();
        let listener = TcpListener::bind(&settings.server.listen).with_context(|| {
            format!(
                "cannot listen on server.listen = {}",
                settings.server.listen
            )
        })?;
        let port = listener.local_addr()?.port();
        let metrics_listener = settings
            .server
            .metrics_listen
            .as_ref()
            .map(|addr| {
                TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on server.metrics_listen = {addr}"))
            })
            .transpose()?;
        let metrics_port = metrics_listener
            .as_ref()
            .map(|l| l.local_addr().map(|a| a.port()))
            .transpose()?;

        let live = Arc::new(LiveConfig::new(config));
        let live_for_workers = live.clone();
        let metrics = Arc::new(Metrics::new());
        let sandbox = (settings.upstream.mode == UpstreamMode::Sandbox)
            .then(|| Arc::new(Sandbox::new(live.clone(), options.clock.clone())));
        if settings.upstream.mode == UpstreamMode::Vidu {
            // Fail at start, not in a worker, when the client cannot be built.
            ViduClient::new(live.clone())?;
        }
        let auth = Authenticator::new(&settings.auth, options.clock.clone(), &metrics)?;
        if let Some(jwks) = auth.jwks() {
            actix_web::rt::spawn(jwks.clone().run());
        }
        let store: Arc<dyn Store> = match settings.state.backend {
            StateBackend::Memory => fail_open(
                MemoryStore::open(
                    &settings.state.ledger_path,
                    options.clock.clone(),
                    metrics.ledger.clone(),
                )?,
                &live,
                &metrics,
            )?,
            StateBackend::Redis => {
                let store =
                    RedisStore::open(&settings.state, settings.upstream.request_timeout_ms)?;
                let store = if options.state_reads_clock {
                    store.with_clock(options.clock.clone())
                } else {
                    store
                };
                fail_open(store, &live, &metrics)?
            }
        };
        // On a shared backend, budget periods and hour windows follow the backend's clock (every replica puts a
        // request in the same day); tests whose scripts read the manual clock keep it.
        let aligned = (settings.state.backend == StateBackend::Redis && !options.state_reads_clock)
            .then(|| AlignedClock::new(options.clock.clone()));
        let clock: SharedClock = match &aligned {
            Some(a) => a.clone(),
            None => options.clock.clone(),
        };
        let state = web::Data::new(AppState {
            config: live,
            auth: std::sync::RwLock::new(Arc::new(auth)),
            store,
            metrics: metrics.clone(),
            clock,
            sandbox,
            replicas: Arc::new(ReplicaView::new(aligned)),
            balance: Arc::new(BalanceWatch::new()),
        });
        {
            let loaded = state.config.current();
            crate::audit::config_loaded(
                &state.store,
                state.clock.now(),
                &loaded.version,
                &loaded.origin.to_string(),
            );
        }
        actix_web::rt::spawn(state.replicas.clone().run(
            state.store.clone(),
            state.config.clone(),
            metrics.clone(),
            options.heartbeat_every,
        ));
        // Following tasks to their end and the balance watch run on the main runtime, with upstream clients of
        // their own.
        let background_upstream = || -> anyhow::Result<Upstream> {
            Ok(match &state.sandbox {
                Some(s) => Upstream::Sandbox(s.clone()),
                None => Upstream::Vidu(ViduClient::new(state.config.clone())?),
            })
        };
        actix_web::rt::spawn(state.balance.clone().run(
            background_upstream()?,
            state.store.clone(),
            metrics.clone(),
            state.config.clone(),
            state.clock.clone(),
            options.balance_every,
        ));
        actix_web::rt::spawn(
            Reconciler {
                store: state.store.clone(),
                config: state.config.clone(),
                metrics: metrics.clone(),
                clock: state.clock.clone(),
                replica: state.replicas.id().to_owned(),
            }
            .run(background_upstream()?, options.reconcile_every),
        );
        actix_web::rt::spawn(
            Relay {
                store: state.store.clone(),
                config: state.config.clone(),
                metrics: metrics.clone(),
                clock: state.clock.clone(),
            }
            .run(options.relay_every),
        );

        if let crate::config::Origin::File(path) = &state.config.current().origin {
            actix_web::rt::spawn(crate::reload::watch_file(state.clone(), path.clone()));
        }
        let buffered_bodies = web::Data::from(BufferedBodies::new());
        let metrics_on_main = metrics_listener.is_none();
        // The API description of what this listener serves: built once, the same bytes for every request.
        let api_document = web::Data::new(ApiDocument::new(routes::described(metrics_on_main)));
        let factory_state = state.clone();
        let factory_metrics = metrics.clone();
        let upstream_config = live_for_workers.clone();
        let mut server = HttpServer::new(move || {
            let upstream = match &factory_state.sandbox {
                Some(s) => Upstream::Sandbox(s.clone()),
                None => match ViduClient::new(upstream_config.clone()) {
                    Ok(c) => Upstream::Vidu(c),
                    // Checked before the server started; unreachable in practice.
                    Err(e) => panic!("cannot build the Vidu client: {e}"),
                },
            };
            App::new()
                .app_data(factory_state.clone())
                .app_data(web::Data::new(factory_metrics.clone()))
                .app_data(web::Data::new(factory_state.store.clone()))
                .app_data(web::Data::new(upstream))
                .app_data(buffered_bodies.clone())
                .app_data(routes::query_config())
                .app_data(api_document.clone())
                .wrap(TracingLogger::<GatewayRootSpan>::new())
                .wrap(from_fn(request_context))
                // Outermost: it holds an unfinished body until the final response is sent.
                .wrap(from_fn(read::guard::guard))
                .configure(|cfg| routes::configure(&mut ServiceConfig::new(cfg), metrics_on_main))
                .default_service(web::to(routes::not_found))
        })
        // Request heads: all headers within 5 s, else actix answers 408 and closes (bodies: body::guard).
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        // After a response that closes the connection (408, 413, 503 on an unread body), the rest of what the
        // client sends is read and discarded for at most this long, so it can read the answer; then close.
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        .listen(listener)?;
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = server.run();

        let metrics_server = match metrics_listener {
            None => None,
            Some(l) => {
                let m = metrics.clone();
                let store = state.store.clone();
                Some(
                    HttpServer::new(move || {
                        App::new()
                            .app_data(web::Data::new(m.clone()))
                            .app_data(web::Data::new(store.clone()))
                            .wrap(from_fn(request_context))
                            .service(routes::metrics_route())
                            .default_service(web::to(routes::not_found))
                    })
                    .workers(1)
                    .shutdown_timeout(1)
                    .listen(l)?
                    .run(),
                )
            }
        };
        Ok(Self {
            server,
            metrics_server,
            port,
            metrics_port,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// A handle to stop the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until stopped, then makes the ledger durable.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let state = self.state.clone();
        let result = self.serve().await;
        if let Err(e) = state.store.flush().await {
            tracing::error!(error = %e, "the state backend could not make the last writes durable");
        }
        result
    }

    async fn serve(self) -> std::io::Result<()> {
        match self.metrics_server {
            None => self.server.await,
            Some(metrics) => {
                let metrics_handle = metrics.handle();
                let metrics_task = actix_web::rt::spawn(metrics);
                let result = self.server.await;
                metrics_handle.stop(true).await;
                let _ = metrics_task.await;
                result
            }
        }
    }
}
