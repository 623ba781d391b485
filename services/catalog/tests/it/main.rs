//! The catalog's integration tests: the real server on loopback against a fresh
//! database, one module a theme, in one test binary.
//! nextest runs every test in a process of its own.

mod abuse;
mod api;
mod cache;
mod common;
mod connections;
mod feed;
mod migrations;
mod outage;
mod runtime;
mod security;
mod stream;
