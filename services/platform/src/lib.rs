//! The shared runtime every Agora service is built on: configuration,
//! telemetry, the database, health, the gRPC middleware stack, metrics, the
//! error model and graceful shutdown. A service crate brings its domain, its
//! store and its gRPC adapter; this crate runs them.
//!
//! # Layout
//! - [`config`]: settings from environment variables, validated at start.
//! - [`telemetry`]: tracing subscriber, text or JSON.
//! - [`db`]: sqlx pool (SQLite or PostgreSQL), embedded migrations.
//! - [`idempotency`]: idempotency keys of create calls.
//! - [`health`]: `grpc.health.v1` driven by migrations, a database probe and shutdown.
//! - [`middleware`]: request id, observe (span + metrics), panic, deadline, admission.
//! - [`feed`]: consuming an upstream's change feed, exactly once in effect.
//! - [`outbox`]: the transactional outbox and its change-feed stream.
//! - [`metrics`]: the Prometheus recorder and the admin HTTP server.
//! - [`error`]: the error vocabulary and its one mapping to gRPC statuses.
//! - [`wire`]: timestamps, page sizes and page tokens at the gRPC edge.
//! - [`server`]: [`Application`]: binds, serves, drains, stops.
//! - [`testing`]: real servers on loopback and fresh databases for integration tests.
#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod error;
pub mod feed;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod outbox;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod upstream;
pub mod wire;

pub use config::{ServiceSpec, Settings};
pub use db::{Backend, Database, Migrations};
pub use error::{Error, Violations};
pub use server::{Application, Services, Shutdown};
