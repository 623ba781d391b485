//! Settings shared by every service, read from environment variables.
//!
//! Every variable has a default that works on a laptop; `Settings::from_env`
//! checks them all and reports every bad one at once, so an operator fixes a
//! deployment in one round. The reader is a few lines by hand: the
//! configuration crates on crates.io add file formats and layering that a
//! twelve-factor service configured by its environment does not need.

pub mod events;
pub mod security;

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

/// What a service tells the runtime about itself.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// Short name: logs, metrics, the default SQLite file and env prefixes.
    pub name: &'static str,
    /// Default gRPC port (catalog 50051, customers 50052, ...).
    pub grpc_port: u16,
    /// Default admin HTTP port serving `/metrics`.
    pub admin_port: u16,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object a line, for a log collector.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".into()),
        }
    }
}

/// What an acknowledged write on SQLite survives (`AGORA_SQLITE_SYNCHRONOUS`),
/// as SQLite's `synchronous` setting in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    /// `normal`, the default: a commit is written to the WAL file, which is
    /// synced at checkpoints, not at each commit. Every acknowledged write
    /// survives a crash of the process (the operating system holds it);
    /// the last commits before a power loss or a kernel crash may be lost,
    /// never half-applied.
    Normal,
    /// `full`: the WAL file is synced at every commit. Every acknowledged
    /// write survives a power loss too, at the cost of a sync per commit.
    Full,
}

impl FromStr for SqliteSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            _ => Err("expected `normal` or `full`".into()),
        }
    }
}

/// A database URL. Wrapped so that a password in it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The URL itself, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scheme and everything after the last '@' (host and database), never
        // the credentials.
        let scheme = self.0.split(':').next().unwrap_or("");
        match self.0.rsplit_once('@') {
            Some((_, host)) => write!(f, "{scheme}://***@{host}"),
            None => f.write_str(&self.0),
        }
    }
}

/// Runtime settings of one service process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address the gRPC server binds (`AGORA_GRPC_ADDR`); port 0 picks a free one.
    pub grpc_addr: SocketAddr,
    /// Address of the admin HTTP server with `/metrics` (`AGORA_ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// The service's own database (`AGORA_DATABASE_URL`).
    pub database_url: DatabaseUrl,
    /// Upper bound of the connection pool (`AGORA_DB_MAX_CONNECTIONS`).
    pub db_max_connections: u32,
    /// How long a call may wait for a pooled connection (`AGORA_DB_ACQUIRE_TIMEOUT_MS`).
    pub db_acquire_timeout: Duration,
    /// How often health asks the database whether it answers (`AGORA_DB_PROBE_INTERVAL_MS`).
    pub db_probe_interval: Duration,
    /// What an acknowledged write on SQLite survives (`AGORA_SQLITE_SYNCHRONOUS`).
    pub sqlite_sync: SqliteSync,
    /// Deadline for calls that carry no grpc-timeout, and the cap for those
    /// that carry a longer one (`AGORA_REQUEST_TIMEOUT_MS`).
    pub request_timeout: Duration,
    /// Calls served at once; more wait for a place, briefly, or are refused
    /// with RESOURCE_EXHAUSTED (`AGORA_CONCURRENCY_LIMIT`).
    pub concurrency_limit: usize,
    /// The longest a call waits for a place when all are taken, within its
    /// own deadline (`AGORA_ADMISSION_WAIT_MS`).
    pub admission_wait: Duration,
    /// Calls that may wait for a place at once; more are refused at once
    /// (`AGORA_ADMISSION_QUEUE`).
    pub admission_queue: usize,
    /// Largest message accepted or sent (`AGORA_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Time between NOT_SERVING and closing the listener, so load balancers
    /// stop sending new calls first (`AGORA_DRAIN_DELAY_MS`).
    pub drain_delay: Duration,
    /// Bound on graceful shutdown after the drain (`AGORA_SHUTDOWN_TIMEOUT_MS`).
    pub shutdown_timeout: Duration,
    /// How often a change-feed stream looks for events committed by other
    /// replicas (`AGORA_OUTBOX_POLL_MS`); this process's own wake it at once.
    pub outbox_poll_interval: Duration,
    /// How long change-feed events are kept (`AGORA_OUTBOX_RETENTION_HOURS`).
    pub outbox_retention: Duration,
    /// Text or JSON logs (`AGORA_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// tracing filter directives (`AGORA_LOG`, else `RUST_LOG`, else `info`).
    pub log_filter: String,
    /// TLS, tokens and the insecure opt-out (`AGORA_TLS_*`, `AGORA_JWT_*`, ...).
    pub security: security::SecuritySettings,
    /// Connections and long-lived streams: their limits and timeouts.
    pub connections: ConnectionSettings,
    /// The web origins whose pages may call this service from a browser
    /// (gRPC-Web), each `scheme://host[:port]` (`AGORA_CORS_ORIGINS`,
    /// comma-separated). None by default: a page of any other origin gets
    /// no CORS answer, and its browser refuses it the call.
    pub cors_origins: Vec<http::HeaderValue>,
    /// How change feeds travel: the producers' Watch streams, or NATS
    /// JetStream (`AGORA_EVENTS`, `AGORA_NATS_*`, `AGORA_EVENTS_*`).
    pub events: events::Transport,
}

/// `AGORA_CORS_ORIGINS`, each origin checked: a scheme (http or https) and
/// a host, an optional port, nothing else. `*` is refused: with tokens on
/// every call there is no reason to let every site's pages use them.
fn cors_origins<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Vec<http::HeaderValue> {
    let Some(raw) = env.optional("AGORA_CORS_ORIGINS") else { return Vec::new() };
    let mut origins = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let origin = origin.trim_end_matches('/');
        let well_formed = origin.parse::<http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
                && uri.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
        });
        match http::HeaderValue::from_str(origin) {
            Ok(value) if well_formed => origins.push(value),
            _ => {
                let shown: String = origin.chars().take(80).collect();
                env.problem(format!(
                    "AGORA_CORS_ORIGINS: {shown:?} is not an origin; expected scheme://host[:port], such as \
                     https://shop.example.com, several separated by commas ('*' is not accepted: name them)"
                ));
            }
        }
    }
    origins
}

/// How the gRPC server bounds what clients hold open: connections (their
/// number, handshake, idleness and age) and long-lived streams (their
/// number, and how long a reader may take nothing).
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Connections open at once (`AGORA_MAX_CONNECTIONS`). At the cap, a
    /// new connection takes the place of the oldest that has not completed
    /// a call yet; with none, it is closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one peer address, under the same rule
    /// (`AGORA_MAX_CONNECTIONS_PER_PEER`): one address cannot take the
    /// whole cap.
    pub max_connections_per_peer: usize,
    /// Time for the TLS handshake, and for a new connection's first call
    /// (`AGORA_HANDSHAKE_TIMEOUT_MS`).
    pub handshake_timeout: Duration,
    /// A connection with no call or stream open for this long is closed
    /// with GOAWAY (`AGORA_IDLE_TIMEOUT_MS`).
    pub idle_timeout: Duration,
    /// A connection this old (±10%) is asked to close with GOAWAY, so
    /// clients re-balance across replicas (`AGORA_MAX_CONNECTION_AGE_MS`).
    pub max_age: Duration,
    /// Time the calls of an aged or idle connection get after its GOAWAY
    /// before it is cut (`AGORA_MAX_CONNECTION_AGE_GRACE_MS`).
    pub age_grace: Duration,
    /// HTTP/2 PING interval, and how long the answer may take before the
    /// peer is taken for dead (`AGORA_KEEPALIVE_INTERVAL_MS`,
    /// `AGORA_KEEPALIVE_TIMEOUT_MS`).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) one connection may have open at once
    /// (`AGORA_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Long-lived streams (server-streaming calls, feeds, health watches)
    /// open at once in the process, and on one connection; more are
    /// refused with RESOURCE_EXHAUSTED (`AGORA_STREAM_LIMIT`,
    /// `AGORA_STREAM_LIMIT_PER_CONNECTION`).
    pub stream_limit: usize,
    pub stream_limit_per_connection: usize,
    /// A stream whose reader takes nothing for this long closes its
    /// connection (`AGORA_STREAM_STALL_TIMEOUT_MS`).
    pub stream_stall_timeout: Duration,
    /// Largest request header list, in HTTP/2's measure (names, values and
    /// 32 bytes a field); a larger one gets RESOURCE_EXHAUSTED naming the
    /// limit (`AGORA_MAX_HEADER_BYTES`).
    pub max_header_bytes: usize,
}

impl ConnectionSettings {
    fn read<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Self {
        Self {
            max_connections: env.number("AGORA_MAX_CONNECTIONS", 1024, 1..=1_000_000),
            max_connections_per_peer: env.number("AGORA_MAX_CONNECTIONS_PER_PEER", 256, 1..=1_000_000),
            handshake_timeout: env.millis("AGORA_HANDSHAKE_TIMEOUT_MS", 10_000, 100..=600_000),
            idle_timeout: env.millis("AGORA_IDLE_TIMEOUT_MS", 300_000, 100..=86_400_000),
            max_age: env.millis("AGORA_MAX_CONNECTION_AGE_MS", 1_800_000, 1_000..=604_800_000),
            age_grace: env.millis("AGORA_MAX_CONNECTION_AGE_GRACE_MS", 30_000, 0..=3_600_000),
            keepalive_interval: env.millis("AGORA_KEEPALIVE_INTERVAL_MS", 30_000, 100..=3_600_000),
            keepalive_timeout: env.millis("AGORA_KEEPALIVE_TIMEOUT_MS", 10_000, 100..=600_000),
            max_concurrent_streams: env.number("AGORA_MAX_CONCURRENT_STREAMS", 256, 1..=100_000),
            stream_limit: env.number("AGORA_STREAM_LIMIT", 512, 1..=1_000_000),
            stream_limit_per_connection: env.number("AGORA_STREAM_LIMIT_PER_CONNECTION", 32, 1..=100_000),
            stream_stall_timeout: env.millis("AGORA_STREAM_STALL_TIMEOUT_MS", 60_000, 100..=3_600_000),
            max_header_bytes: env.number("AGORA_MAX_HEADER_BYTES", 16 << 10, (1 << 10)..=(1 << 20)),
        }
    }

    /// The defaults, as a process without any of the variables gets them.
    pub fn defaults() -> Self {
        Self::read(&mut EnvReader::new(|_| None))
    }
}

/// Every problem found in the environment, one line each.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads variables through a lookup function, collecting problems.
pub struct EnvReader<F> {
    lookup: F,
    problems: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> EnvReader<F> {
    pub fn new(lookup: F) -> Self {
        Self { lookup, problems: Vec::new() }
    }

    /// The raw value of `name`, or `default` when unset or empty.
    pub fn string(&mut self, name: &str, default: &str) -> String {
        match (self.lookup)(name) {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => default.to_owned(),
        }
    }

    /// The raw value of `name` when set and not empty.
    pub fn optional(&mut self, name: &str) -> Option<String> {
        (self.lookup)(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// `name` parsed as `T`, or `default`; a value that does not parse is a
    /// problem, reported with the error (which says what is expected).
    pub fn parse<T>(&mut self, name: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.parse_as(name, default, "")
    }

    /// As [`Self::parse`], the problem naming `form`, what is expected.
    fn parse_as<T>(&mut self, name: &str, default: T, form: &str) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.optional(name) {
            None => default,
            Some(raw) => match raw.parse() {
                Ok(v) => v,
                Err(e) if form.is_empty() => {
                    self.problems.push(format!("{name}={raw:?}: {e}"));
                    default
                }
                Err(e) => {
                    self.problems.push(format!("{name}={raw:?}: {e}; expected {form}"));
                    default
                }
            },
        }
    }

    /// `name` as a socket address.
    pub fn address(&mut self, name: &str, default: SocketAddr) -> SocketAddr {
        self.parse_as(name, default, "an address and port, such as 0.0.0.0:50051")
    }

    /// `name` as a whole number of milliseconds within `range`.
    pub fn millis(&mut self, name: &str, default_ms: u64, range: std::ops::RangeInclusive<u64>) -> Duration {
        let form = format!("milliseconds, a whole number from {} to {}", range.start(), range.end());
        let ms = self.parse_as(name, default_ms, &form);
        self.check(name, ms, &range);
        Duration::from_millis(ms)
    }

    /// `name` as a number within `range`.
    pub fn number<T>(&mut self, name: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let form = format!("a number from {} to {}", range.start(), range.end());
        let v = self.parse_as(name, default, &form);
        self.check(name, v, &range);
        v
    }

    fn check<T: PartialOrd + fmt::Display>(&mut self, name: &str, v: T, range: &std::ops::RangeInclusive<T>) {
        if !range.contains(&v) {
            self.problems.push(format!("{name}={v}: must be between {} and {}", range.start(), range.end()));
        }
    }

    /// Records a problem found by the caller.
    pub fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// Ok when no problem was found.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() { Ok(()) } else { Err(ConfigError(self.problems)) }
    }
}

impl Settings {
    /// Settings from the process environment.
    pub fn from_env(spec: &ServiceSpec) -> Result<Self, ConfigError> {
        let mut env = EnvReader::new(|name| std::env::var(name).ok());
        let settings = Self::read(spec, &mut env);
        env.finish().map(|()| settings)
    }

    /// `AGORA_DATABASE_URL`, or the content of the file that
    /// `AGORA_DATABASE_URL_FILE` names: a mounted Secret keeps the password
    /// out of the environment, where every process of the user can read it.
    fn database_url<F: Fn(&str) -> Option<String>>(spec: &ServiceSpec, env: &mut EnvReader<F>) -> String {
        let default = format!("sqlite:data/{}.db", spec.name);
        match (env.optional("AGORA_DATABASE_URL"), env.optional("AGORA_DATABASE_URL_FILE")) {
            (Some(_), Some(_)) => {
                env.problem(
                    "AGORA_DATABASE_URL and AGORA_DATABASE_URL_FILE: set one of them, not both".into(),
                );
                default
            }
            (Some(url), None) => url,
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
                Ok(_) => {
                    env.problem(format!("AGORA_DATABASE_URL_FILE={path}: the file is empty"));
                    default
                }
                Err(e) => {
                    env.problem(format!("AGORA_DATABASE_URL_FILE={path}: {e}"));
                    default
                }
            },
            (None, None) => default,
        }
    }

    /// Settings from any lookup; tests pass a map.
    pub fn read<F: Fn(&str) -> Option<String>>(spec: &ServiceSpec, env: &mut EnvReader<F>) -> Self {
        let grpc_addr = env.address("AGORA_GRPC_ADDR", SocketAddr::from(([0, 0, 0, 0], spec.grpc_port)));
        let admin_addr = env.address("AGORA_ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], spec.admin_port)));
        let database_url = DatabaseUrl::new(Self::database_url(spec, env));
        if !database_url.is_postgres() && !database_url.is_sqlite() {
            env.problem(format!(
                "AGORA_DATABASE_URL={:?}: expected a sqlite: or postgres:// URL",
                database_url
            ));
        }
        let (log_filter, log_variable) = match (env.optional("AGORA_LOG"), env.optional("RUST_LOG")) {
            (Some(filter), _) => (filter, "AGORA_LOG"),
            (None, Some(filter)) => (filter, "RUST_LOG"),
            (None, None) => ("info".to_owned(), ""),
        };
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            env.problem(format!(
                "{log_variable}={log_filter:?}: {err}; expected a level (error, warn, info, debug, trace) \
                 or directives such as info,agora_platform=debug"
            ));
        }
        Self {
            grpc_addr,
            admin_addr,
            database_url,
            db_max_connections: env.number("AGORA_DB_MAX_CONNECTIONS", 8, 1..=1000),
            db_acquire_timeout: env.millis("AGORA_DB_ACQUIRE_TIMEOUT_MS", 2_000, 1..=600_000),
            db_probe_interval: env.millis("AGORA_DB_PROBE_INTERVAL_MS", 1_000, 10..=600_000),
            sqlite_sync: env.parse("AGORA_SQLITE_SYNCHRONOUS", SqliteSync::Normal),
            request_timeout: env.millis("AGORA_REQUEST_TIMEOUT_MS", 10_000, 1..=3_600_000),
            concurrency_limit: env.number("AGORA_CONCURRENCY_LIMIT", 256, 1..=1_000_000),
            admission_wait: env.millis("AGORA_ADMISSION_WAIT_MS", 50, 0..=10_000),
            admission_queue: env.number("AGORA_ADMISSION_QUEUE", 1024, 0..=1_000_000),
            max_message_bytes: env.number(
                "AGORA_MAX_MESSAGE_BYTES",
                4 * 1024 * 1024,
                (64 << 10)..=(256 << 20),
            ),
            drain_delay: env.millis("AGORA_DRAIN_DELAY_MS", 5_000, 0..=600_000),
            shutdown_timeout: env.millis("AGORA_SHUTDOWN_TIMEOUT_MS", 10_000, 0..=600_000),
            outbox_poll_interval: env.millis("AGORA_OUTBOX_POLL_MS", 500, 10..=60_000),
            outbox_retention: Duration::from_secs(
                3600 * env.number("AGORA_OUTBOX_RETENTION_HOURS", 168u64, 1..=24 * 365),
            ),
            log_format: env.parse("AGORA_LOG_FORMAT", LogFormat::Text),
            log_filter,
            security: security::SecuritySettings::read(env),
            connections: ConnectionSettings::read(env),
            cors_origins: cors_origins(env),
            events: events::Transport::read(env),
        }
    }

    /// Settings for a test: loopback, free ports, short delays, and no
    /// TLS or tokens (the test harness adds its own).
    pub fn for_tests(database_url: DatabaseUrl) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url,
            db_max_connections: 4,
            db_acquire_timeout: Duration::from_secs(2),
            db_probe_interval: Duration::from_millis(50),
            sqlite_sync: SqliteSync::Normal,
            request_timeout: Duration::from_secs(10),
            concurrency_limit: 64,
            admission_wait: Duration::from_millis(50),
            admission_queue: 1024,
            max_message_bytes: 4 * 1024 * 1024,
            drain_delay: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(5),
            outbox_poll_interval: Duration::from_millis(200),
            outbox_retention: Duration::from_secs(168 * 3600),
            log_format: LogFormat::Text,
            log_filter: "warn".into(),
            security: security::SecuritySettings::insecure(),
            connections: ConnectionSettings::defaults(),
            cors_origins: Vec::new(),
            events: events::Transport::Watch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SPEC: ServiceSpec = ServiceSpec { name: "catalog", grpc_port: 50051, admin_port: 9101 };

    fn read(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut env = EnvReader::new(move |k| map.get(k).cloned());
        let s = Settings::read(&SPEC, &mut env);
        env.finish().map(|()| s)
    }

    /// The URL may come from a file (a mounted Secret); its content never
    /// reaches an error message.
    #[test]
    fn the_database_url_may_be_read_from_a_file() {
        let (_dir, file) = crate::scratch_file("config", "url", "postgres://agora:s3cret@db/agora\n");
        let path = file.to_str().unwrap();
        let s = read(&[("AGORA_INSECURE", "1"), ("AGORA_DATABASE_URL_FILE", path)]).unwrap();
        assert!(s.database_url.is_postgres());
        assert_eq!(format!("{:?}", s.database_url), "postgres://***@db/agora");
        let both =
            read(&[("AGORA_INSECURE", "1"), ("AGORA_DATABASE_URL_FILE", path), ("AGORA_DATABASE_URL", "x")]);
        assert!(both.unwrap_err().0[0].contains("not both"));
        let missing =
            read(&[("AGORA_INSECURE", "1"), ("AGORA_DATABASE_URL_FILE", "/nonexistent/url")]).unwrap_err();
        assert!(missing.0[0].starts_with("AGORA_DATABASE_URL_FILE=/nonexistent/url: "), "{missing}");
        let (_dir, bad) = crate::scratch_file("config-bad", "url", "mysql://agora:s3cret@db/agora");
        let bad =
            read(&[("AGORA_INSECURE", "1"), ("AGORA_DATABASE_URL_FILE", bad.to_str().unwrap())]).unwrap_err();
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
    }

    #[test]
    fn without_tls_and_token_keys_nothing_starts_unless_insecure_is_asked_for() {
        let err = read(&[]).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        for name in ["AGORA_TLS_CERT_FILE", "AGORA_TLS_KEY_FILE", "AGORA_JWKS_FILE", "AGORA_INSECURE=1"] {
            assert!(err.0[0].contains(name), "{name} missing from {err}");
        }
        let half = read(&[("AGORA_TLS_CERT_FILE", "c.pem"), ("AGORA_TLS_KEY_FILE", "k.pem")]).unwrap_err();
        assert!(
            half.0[0].contains("AGORA_JWKS_FILE") && !half.0[0].contains("AGORA_TLS_CERT_FILE"),
            "{half}"
        );
        let s = read(&[("AGORA_INSECURE", "1")]).unwrap();
        assert_eq!(s.security.missing(), ["tls", "authentication"]);
        assert!(read(&[("AGORA_INSECURE", "maybe")]).is_err());
    }

    #[test]
    fn defaults_need_no_environment_but_the_insecure_opt_in() {
        let s = read(&[("AGORA_INSECURE", "1")]).unwrap();
        assert_eq!(s.grpc_addr.port(), 50051);
        assert_eq!(s.admin_addr.port(), 9101);
        assert_eq!(s.database_url.expose(), "sqlite:data/catalog.db");
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let err = read(&[
            ("AGORA_INSECURE", "1"),
            ("AGORA_GRPC_ADDR", "nowhere"),
            ("AGORA_CONCURRENCY_LIMIT", "0"),
            ("AGORA_LOG_FORMAT", "xml"),
            ("AGORA_DATABASE_URL", "mysql://x"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for name in ["AGORA_GRPC_ADDR", "AGORA_CONCURRENCY_LIMIT", "AGORA_LOG_FORMAT", "AGORA_DATABASE_URL"] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
        assert_eq!(err.0.len(), 4);
    }

    #[test]
    fn every_problem_says_what_is_expected() {
        let err = read(&[
            ("AGORA_INSECURE", "1"),
            ("AGORA_LOG", "info,agora=loud"),
            ("AGORA_ADMIN_ADDR", "9101"),
            ("AGORA_DRAIN_DELAY_MS", "soon"),
            ("AGORA_DB_MAX_CONNECTIONS", "many"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "AGORA_LOG=\"info,agora=loud\"",
            "expected a level (error, warn, info, debug, trace)",
            "AGORA_ADMIN_ADDR=\"9101\"",
            "expected an address and port, such as 0.0.0.0:50051",
            "AGORA_DRAIN_DELAY_MS=\"soon\"",
            "expected milliseconds, a whole number from 0 to 600000",
            "AGORA_DB_MAX_CONNECTIONS=\"many\"",
            "expected a number from 1 to 1000",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from {text}");
        }
        assert_eq!(err.0.len(), 4);
    }

    /// Origins are listed, checked one by one, and `*` is refused.
    #[test]
    fn cors_origins_are_named_one_by_one() {
        let settings = read(&[
            ("AGORA_INSECURE", "1"),
            ("AGORA_CORS_ORIGINS", "https://shop.example.com, http://127.0.0.1:5173/"),
        ])
        .unwrap();
        assert_eq!(settings.cors_origins, ["https://shop.example.com", "http://127.0.0.1:5173"]);
        assert!(read(&[("AGORA_INSECURE", "1")]).unwrap().cors_origins.is_empty(), "none by default");
        for bad in ["*", "shop.example.com", "ftp://shop.example.com", "https://shop.example.com/page"] {
            let err = read(&[("AGORA_INSECURE", "1"), ("AGORA_CORS_ORIGINS", bad)]).unwrap_err().to_string();
            assert!(err.contains("expected scheme://host[:port]"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_database_password_never_prints() {
        let url = DatabaseUrl::new("postgres://agora:s3cret@db:5432/catalog");
        let shown = format!("{url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db:5432/catalog"));
    }
}
