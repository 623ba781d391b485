//! The shopping service's integration tests: the real shopping, catalog and
//! customers servers on loopback, one module a theme, in one test binary.
//! nextest runs every test in a process of its own.

mod api;
mod common;
mod deletions;
mod failure;
mod feed;
mod migrations;
mod runtime;
mod security;
mod startup;
