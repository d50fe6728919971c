//! The typed configuration: every key, its code default, and nothing else (unknown keys are errors). Values that
//! can be wrong are parsed here, at load, into types that cannot be (`values.rs`, `hours.rs`): nothing after the
//! load checks them again.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::hours::HourWindow;
use super::secret::Secret;
use super::values::{BaseUrl, HostPattern, Zone, at_least_one};
use crate::catalog::Catalog;
use crate::catalog::pricing::PricingSettings;

/// The whole configuration file. Each section falls back to its code default when absent.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub auth: AuthSettings,
    pub validation: ValidationSettings,
    /// The model catalog; empty here means the seed catalog (filled in when the configuration is loaded).
    pub models: Catalog,
    pub pricing: PricingSettings,
    pub policy: PolicySettings,
    pub state: StateSettings,
    pub callbacks: CallbacksSettings,
    pub tasks: TasksSettings,
    pub balance: BalanceSettings,
    pub idempotency: IdempotencySettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the API listens on.
    pub listen: String,
    /// Request bodies above this are refused with 413 while reading.
    pub max_body_bytes: usize,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_timeout_secs: u64,
    /// When set, `/metrics` is served here and not on `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Worker threads; 0 = one per CPU core.
    pub workers: usize,
    /// A request body must start arriving within this long once the gateway reads it, and may never pause
    /// longer; 408 `RequestTimeout` otherwise.
    pub body_read_timeout_ms: u64,
    /// Beyond the first `body_read_timeout_ms`, a body must average at least this rate: each byte received
    /// extends its deadline by 1/rate s. 0 = no extension (every body within `body_read_timeout_ms`).
    pub body_min_bytes_per_sec: u64,
    /// Bytes of request bodies buffered at once, across all connections; a body that does not fit gets 503
    /// `ServiceUnavailable` with `Retry-After`.
    pub max_buffered_body_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 20 * 1024 * 1024,
            shutdown_timeout_secs: 30,
            metrics_listen: None,
            workers: 0,
            body_read_timeout_ms: 10_000,
            body_min_bytes_per_sec: 16 * 1024,
            max_buffered_body_bytes: 320 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamMode {
    /// The built-in Vidu simulator: no key, no network, no cost.
    #[default]
    Sandbox,
    /// The real Vidu API at `upstream.base_url`.
    Vidu,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    pub mode: UpstreamMode,
    pub base_url: BaseUrl,
    pub api_key: Secret,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// A pooled connection to Vidu idle this long is closed rather than reused (0: a new connection per call).
    pub pool_idle_timeout_ms: u64,
    pub sandbox_complete_after_secs: u64,
    /// Sandbox: an off-peak task not finished this long after its creation is cancelled (Vidu: 48 h).
    pub sandbox_offpeak_expire_secs: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            mode: UpstreamMode::Sandbox,
            base_url: BaseUrl::default(),
            api_key: Secret::default(),
            api_key_file: None,
            connect_timeout_ms: 3000,
            request_timeout_ms: 30000,
            pool_idle_timeout_ms: 15000,
            sandbox_complete_after_secs: 10,
            sandbox_offpeak_expire_secs: 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub algorithms: Vec<String>,
    pub hs256_secret: Secret,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret_file: Option<PathBuf>,
    pub public_key_files: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    pub jwks_refresh_secs: u64,
    pub require_team: bool,
    pub user_claim: String,
    pub team_claim: String,
    pub roles_claim: String,
    pub admin_role: String,
    /// Longest token lifetime accepted, in seconds: `exp − iat`, or `exp − now` when the token has no `iat`.
    /// Unset: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_secs: Option<u64>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            algorithms: vec!["RS256".into(), "ES256".into()],
            hs256_secret: Secret::default(),
            hs256_secret_file: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 60,
            jwks_refresh_secs: 300,
            require_team: true,
            user_claim: "sub".into(),
            team_claim: "team".into(),
            roles_claim: "roles".into(),
            admin_role: "vidu-gateway-admin".into(),
            max_token_lifetime_secs: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// 400 `FieldUnwanted` naming the fields.
    #[default]
    Reject,
    /// Removed from the body before it is forwarded.
    Strip,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSettings {
    pub unknown_fields: UnknownFields,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffPeakMode {
    /// The caller's `off_peak` passes unchanged.
    #[default]
    Allow,
    /// `off_peak: true` on every request.
    Force,
    /// `off_peak: true` is refused (403).
    Forbid,
    /// Immediate while the immediate budget lasts and inside `immediate_hours`, else off-peak.
    Fallback,
}

/// Whether a table's limits refuse (`on`) or only observe (`shadow`: a request they would refuse is admitted,
/// counted and logged), for trying a limit on live traffic before it bites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforce {
    #[default]
    On,
    Shadow,
}

/// Declares a policy struct: the per-user keys of `[policy.defaults]`, plus `extra` keys. A limit
/// (`requests_per_minute`, `burst`, `max_in_flight`, and the `team_*` ones) is at least 1: 0 is refused at load.
macro_rules! policy_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $extra:ident : $ety:ty,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $extra: Option<$ety>,)*
            #[serde(default, deserialize_with = "at_least_one", skip_serializing_if = "Option::is_none")]
            pub requests_per_minute: Option<NonZeroU32>,
            #[serde(default, deserialize_with = "at_least_one", skip_serializing_if = "Option::is_none")]
            pub burst: Option<NonZeroU32>,
            #[serde(default, deserialize_with = "at_least_one", skip_serializing_if = "Option::is_none")]
            pub max_in_flight: Option<NonZeroU32>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub daily_credits: Option<u64>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub monthly_credits: Option<u64>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub models: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub max_duration: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub max_resolution: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub allow_recommended_prompt: Option<bool>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub off_peak: Option<OffPeakMode>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub immediate_daily_credits: Option<u64>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub immediate_hours: Option<Vec<HourWindow>>,
            #[serde(default, deserialize_with = "at_least_one", skip_serializing_if = "Option::is_none")]
            pub max_running_tasks: Option<NonZeroU32>,
            /// Fair share weight: a team's own (`[policy.teams.<t>]`), or the pool of unlisted teams
            /// (`[policy.defaults]`); no effect in a user table.
            #[serde(default, skip_serializing_if = "Option::is_none")] pub task_share: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")] pub enforce: Option<Enforce>,
        }
    };
}

policy_struct!(
    /// `[policy.defaults]` and `[policy.users."<user>"]`: rules for each user individually.
    UserPolicy {}
);

policy_struct!(
    /// `[policy.teams.<team>]`: team-wide aggregate limits, plus any per-user key for the team's members.
    TeamPolicy {
        #[serde(deserialize_with = "at_least_one")]
        team_requests_per_minute: NonZeroU32,
        #[serde(deserialize_with = "at_least_one")]
        team_burst: NonZeroU32,
        #[serde(deserialize_with = "at_least_one")]
        team_max_in_flight: NonZeroU32,
        team_daily_credits: u64,
        team_monthly_credits: u64,
        #[serde(deserialize_with = "at_least_one")]
        team_max_running_tasks: NonZeroU32,
    }
);

/// `[policy.global]`: the enterprise key as a whole.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalPolicy {
    #[serde(
        default,
        deserialize_with = "at_least_one",
        skip_serializing_if = "Option::is_none"
    )]
    pub requests_per_minute: Option<NonZeroU32>,
    #[serde(
        default,
        deserialize_with = "at_least_one",
        skip_serializing_if = "Option::is_none"
    )]
    pub burst: Option<NonZeroU32>,
    #[serde(
        default,
        deserialize_with = "at_least_one",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_in_flight: Option<NonZeroU32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_credits: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_credits: Option<u64>,
    /// Tasks running at once for the whole enterprise key, shared fairly between teams (`task_share`).
    #[serde(
        default,
        deserialize_with = "at_least_one",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_running_tasks: Option<NonZeroU32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<Enforce>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// The calendar of budget days and months and of `immediate_hours`.
    pub timezone: Zone,
    pub team_can_read_tasks: bool,
    pub defaults: UserPolicy,
    pub teams: BTreeMap<String, TeamPolicy>,
    pub users: BTreeMap<String, UserPolicy>,
    pub global: GlobalPolicy,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            timezone: Zone::default(),
            team_can_read_tasks: true,
            defaults: UserPolicy {
                off_peak: Some(OffPeakMode::Allow),
                ..UserPolicy::default()
            },
            teams: BTreeMap::new(),
            users: BTreeMap::new(),
            global: GlobalPolicy::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    #[default]
    Memory,
    Redis,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Refuse with 503 when the state backend cannot be reached.
    #[default]
    FailClosed,
    /// Admit without budget checks (logged and counted) when the state backend cannot be reached.
    FailOpen,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    pub backend: StateBackend,
    pub ledger_path: PathBuf,
    pub redis_url: Secret,
    /// Redis backend: a file holding the Redis password, for a URL without one (a mounted secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<PathBuf>,
    /// The password read from `redis_password_file` (not a key of its own).
    #[serde(skip)]
    pub redis_password: Secret,
    /// Redis backend over `rediss://`: a PEM file of the CA certificates to trust instead of the public web roots
    /// (a managed Redis with its own CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub on_unavailable: OnUnavailable,
    /// Redis backend: the longest one round trip to Redis may take before the call counts as failed.
    pub redis_timeout_ms: u64,
    /// Redis backend: how long task records and finished reservations are kept.
    pub task_retention_days: u32,
    /// `fail_open`: what was admitted and settled while the backend could not be reached, kept (SQLite) until it
    /// is written back.
    pub spool_path: PathBuf,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            backend: StateBackend::Memory,
            ledger_path: "data/ledger.sqlite3".into(),
            redis_url: Secret::new("redis://127.0.0.1:6379/0"),
            redis_password_file: None,
            redis_password: Secret::default(),
            redis_ca_file: None,
            key_prefix: "vidu-gw".into(),
            on_unavailable: OnUnavailable::FailClosed,
            redis_timeout_ms: 50,
            task_retention_days: 30,
            spool_path: "data/spool.sqlite3".into(),
        }
    }
}

/// Vidu's callbacks in, and the relay of task states to the callers' `callback_url`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbacksSettings {
    /// The gateway's own address as Vidu reaches it; `""`: states are learned by reconciliation only.
    pub public_base_url: String,
    /// A callback's `Date` may be this far from the gateway's clock.
    pub max_skew_secs: u64,
    /// Hosts a caller's `callback_url` may name (`host` or `*.suffix`); `[]` = relay nothing.
    pub relay_hosts: Vec<HostPattern>,
    /// The secret relays are signed with, for teams without one of their own.
    pub relay_secret: Secret,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_secret_file: Option<PathBuf>,
    /// Deliveries of one state change before it is given up.
    pub relay_attempts: u32,
    /// One delivery attempt, connect to answer.
    pub relay_timeout_ms: u64,
    /// The wait after the first failed attempt, doubling after each.
    pub relay_backoff_ms: u64,
    /// The longest wait between two attempts.
    pub relay_backoff_max_ms: u64,
    /// Per team: the secret its relays are signed with.
    pub teams: BTreeMap<String, TeamCallbacks>,
}

impl Default for CallbacksSettings {
    fn default() -> Self {
        Self {
            public_base_url: String::new(),
            max_skew_secs: 300,
            relay_hosts: Vec::new(),
            relay_secret: Secret::default(),
            relay_secret_file: None,
            relay_attempts: 8,
            relay_timeout_ms: 5000,
            relay_backoff_ms: 1000,
            relay_backoff_max_ms: 300_000,
            teams: BTreeMap::new(),
        }
    }
}

impl CallbacksSettings {
    /// Relaying is on when the gateway has a public URL for Vidu's callbacks or may relay to some host: the
    /// caller's `callback_url` then never reaches Vidu.
    pub fn relaying(&self) -> bool {
        !self.public_base_url.is_empty() || !self.relay_hosts.is_empty()
    }

    /// The secret a team's relays are signed with: its own, else `relay_secret`.
    pub fn secret_for(&self, team: &str) -> Option<&Secret> {
        self.teams
            .get(team)
            .map(|t| &t.secret)
            .filter(|s| s.is_set())
            .or(Some(&self.relay_secret).filter(|s| s.is_set()))
    }

    /// The gateway's own callback URL, when `public_base_url` is set.
    pub fn own_url(&self) -> Option<String> {
        (!self.public_base_url.is_empty()).then(|| {
            format!(
                "{}/gateway/v1/callbacks/vidu",
                self.public_base_url.trim_end_matches('/')
            )
        })
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamCallbacks {
    pub secret: Secret,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

/// Following tasks to their end.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSettings {
    /// Non-terminal tasks not heard of for this long are queried; 0 = never poll.
    pub reconcile_interval_secs: u64,
    /// Reconciliation queries per minute, all replicas together.
    pub reconcile_max_per_minute: u32,
    /// An `unknown` reservation nobody resolved is released after this long.
    pub unknown_release_after_hours: u64,
    /// A running-task slot is freed when nothing is heard of its task for this long.
    pub running_slot_ttl_secs: u64,
    /// Whether off-peak tasks hold a running-task slot.
    pub offpeak_holds_slot: bool,
    /// A team that has neither a running task nor asked for one for this long leaves its guarantee to others.
    pub fair_share_idle_secs: u64,
}

impl Default for TasksSettings {
    fn default() -> Self {
        Self {
            reconcile_interval_secs: 60,
            reconcile_max_per_minute: 60,
            unknown_release_after_hours: 48,
            running_slot_ttl_secs: 7200,
            offpeak_holds_slot: false,
            fair_share_idle_secs: 300,
        }
    }
}

/// Watching the Vidu account's balance (`GET /ent/v2/credits`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceSettings {
    /// Seconds between two reads of the balance; 0 = never read it.
    pub poll_secs: u64,
    /// A WARN log each time the balance is read below this; 0 = never.
    pub warn_below: u64,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        Self {
            poll_secs: 300,
            warn_below: 0,
        }
    }
}

/// `Idempotency-Key` on creates.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySettings {
    /// How long the answer to a create with an `Idempotency-Key` is kept for the retries that repeat it.
    pub ttl_secs: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self { ttl_secs: 86_400 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".into(),
        }
    }
}
