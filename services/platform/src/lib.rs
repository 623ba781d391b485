//! The shared runtime every Agora service is built on: configuration,
//! telemetry, the database and its unit of work, health, the gRPC
//! middleware stack, metrics, the error model, change feeds in and out,
//! upstream calls, start-up and graceful shutdown. A service crate brings
//! its domain, its repository and its gRPC adapter; this crate runs them.
//!
//! # Layout
//! The modules, lowest layer first ([`LAYERS`]): each uses only those
//! above it in this list.
//! - [`error`]: the error vocabulary and its one mapping to gRPC statuses.
//! - [`config`]: settings from environment variables, validated at start.
//! - [`telemetry`]: tracing subscriber, text or JSON; traces over OTLP.
//! - [`task`]: background tasks and the shutdown signal they end on.
//! - [`deadline`]: when the call a task serves must be answered by.
//! - [`connection`]: what the server and its middleware share of a connection.
//! - [`health`]: `grpc.health.v1` driven by migrations, a database probe and shutdown.
//! - [`metrics`]: the Prometheus recorder and the admin HTTP server
//!   (`/metrics` and plaintext gRPC health for probes).
//! - [`read_cache`]: a read-through cache of what a service serves from its
//!   own database, kept only while the service follows its own changes.
//! - [`db`]: typed sqlx pools (SQLite or PostgreSQL), statements, the unit
//!   of work (transaction, outbox events, idempotency key), migrations,
//!   keyset pages.
//! - [`wire`]: what every handler reads: ids, idempotency keys, pages, timestamps.
//! - [`outbox`]: the change feed a service publishes, served as a Watch stream.
//! - [`feed`]: following an upstream's change feed, exactly once in effect.
//! - [`events`]: change feeds on NATS JetStream: the outbox relayed, partitions shared.
//! - [`middleware`]: request id, observe (span + metrics), panic, deadline, admission.
//! - [`security`]: TLS and mTLS, bearer tokens, the policy tables and
//!   the layer that enforces them.
//! - [`upstream`]: the client stack and the one meaning of an upstream's answers.
//! - [`server`]: [`Application`]: the start sequence, serving, draining, stopping.
//!
//! Test support (real servers on loopback, fresh databases) is the
//! `agora-testing` crate, which production binaries do not link.
#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod db;
pub mod deadline;
pub mod error;
pub mod events;
pub mod feed;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod outbox;
pub mod read_cache;
pub mod security;
pub mod server;
pub mod task;
pub mod telemetry;
pub mod upstream;
pub mod wire;

pub use config::{ServiceSpec, Settings};
pub use db::{Backend, Database, Migrations, UnitOfWork};
pub use error::{Error, Precondition, Violations};
pub use server::{Application, Services};
pub use task::Shutdown;

/// The platform's modules, lowest first. A module uses only modules
/// before it in this list, so the layers read one way: the foundation
/// (errors, settings, telemetry, background tasks, the call's deadline,
/// a connection's state, health, metrics), then `db` and `wire`, the
/// change feeds out and in above them (`outbox`, `feed`, `events`), the
/// call's stack and its security, upstream calls, and `server` on top.
/// The `layers` test holds the sources to it; docs/ARCHITECTURE.md draws it.
pub const LAYERS: &[&str] = &[
    "error",
    "config",
    "telemetry",
    "task",
    "deadline",
    "connection",
    "health",
    "metrics",
    "read_cache",
    "db",
    "wire",
    "outbox",
    "feed",
    "events",
    "middleware",
    "security",
    "upstream",
    "server",
];

#[cfg(test)]
mod layers;

/// A directory of this test process's own under the system's temporary
/// directory, created.
#[cfg(test)]
pub(crate) fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agora-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A scratch directory (see [`scratch_dir`]) holding one file, `file`,
/// with `contents`: the directory and the file's path.
#[cfg(test)]
pub(crate) fn scratch_file(
    name: &str,
    file: &str,
    contents: impl AsRef<[u8]>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch_dir(name);
    let path = dir.join(file);
    std::fs::write(&path, contents).expect("a scratch file");
    (dir, path)
}
