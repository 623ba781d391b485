//! The anti-corruption layer of the shopping context: the only code that
//! talks to other contexts, through the shared upstream client stack, and
//! translates their answers into this context's terms. Shopping only ever
//! asks its upstreams questions and follows their change feeds; it never
//! writes to them, and it keeps nothing of their answers but the ids it
//! already had.

pub mod catalog;
pub mod customers;
pub mod feeds;
