//! The anti-corruption layer of the offers context: the only code that talks
//! to other contexts, through the shared upstream client stack, and
//! translates their answers into this context's terms. Offers only ever ask
//! questions of its upstreams and follows their change feeds; it never
//! writes to them.

pub mod catalog;
pub mod customers;
pub mod feeds;
