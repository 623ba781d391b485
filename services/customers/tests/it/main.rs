//! The customers service's integration tests: the real server on loopback
//! against a fresh database, one module a theme, in one test binary.
//! nextest runs every test in a process of its own.

mod api;
mod common;
mod logs;
mod migrations;
mod runtime;
mod security;
