//! The offers service's integration tests: the real offers, catalog and
//! customers servers on loopback, one module a theme, in one test binary.
//! nextest runs every test in a process of its own.

mod api;
mod availability;
mod cache;
mod common;
mod deletions;
mod failure;
mod feed;
mod jetstream;
mod migrations;
mod outage;
mod projection;
mod security;
mod startup;
