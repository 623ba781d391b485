//! The shared runtime every Agora service is built on: configuration,
//! telemetry, the database and its unit of work, health, the gRPC
//! middleware stack, metrics, the error model, change feeds in and out,
//! upstream calls, start-up and graceful shutdown. A service crate brings
//! its domain, its repository and its gRPC adapter; this crate runs them.
//!
//! # Layout
//! - [`config`]: settings from environment variables, validated at start.
//! - [`telemetry`]: tracing subscriber, text or JSON.
//! - [`db`]: typed sqlx pools (SQLite or PostgreSQL), statements, the unit
//!   of work (transaction, outbox events, idempotency key), migrations,
//!   keyset pages.
//! - [`health`]: `grpc.health.v1` driven by migrations, a database probe and shutdown.
//! - [`middleware`]: request id, observe (span + metrics), panic, deadline, admission.
//! - [`outbox`]: the change feed a service publishes, served as a Watch stream.
//! - [`feed`]: following an upstream's change feed, exactly once in effect.
//! - [`events`]: change feeds on NATS JetStream: the outbox relayed, partitions shared.
//! - [`upstream`]: the client stack and the one meaning of an upstream's answers.
//! - [`metrics`]: the Prometheus recorder and the admin HTTP server
//!   (`/metrics` and plaintext gRPC health for probes).
//! - [`security`]: TLS and mTLS, bearer tokens, the policy tables and
//!   the layer that enforces them.
//! - [`error`]: the error vocabulary and its one mapping to gRPC statuses.
//! - [`wire`]: what every handler reads: ids, idempotency keys, pages, timestamps.
//! - [`server`]: [`Application`]: the start sequence, serving, draining, stopping.
//!
//! Test support (real servers on loopback, fresh databases) is the
//! `agora-testing` crate, which production binaries do not link.
#![forbid(unsafe_code)]

pub mod config;
pub mod db;
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
pub mod telemetry;
pub mod upstream;
pub mod wire;

pub use config::{ServiceSpec, Settings};
pub use db::{Backend, Database, Migrations, UnitOfWork};
pub use error::{Error, Precondition, Violations};
pub use server::{Application, Services, Shutdown};

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
