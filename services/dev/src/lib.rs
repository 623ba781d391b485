//! Development credentials for Agora, generated in Rust (rcgen and
//! jsonwebtoken, on aws-lc-rs like the services): a local CA, a
//! certificate per service, a token signing key with its JWKS, and tokens.
//! `make run` writes them under `data/dev/` with the `agora-dev` binary;
//! the tests make their own in a temporary directory.
//!
//! Nothing here is for production: the CA key sits beside the
//! certificates, and anyone who can read it can mint any identity.
#![forbid(unsafe_code)]

pub mod layout;
pub mod pki;
pub mod tokens;
