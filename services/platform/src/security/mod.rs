//! Who may call what, and over which transport.
//!
//! - [`reload`]: certificate, key, JWKS and token files, re-read when they
//!   change, without a restart.
//! - [`tls`]: TLS 1.3 on the gRPC port (client certificates verified when
//!   presented), the connector upstream calls use (presenting this
//!   service's certificate), and the service identity in a certificate.
//! - [`token`]: bearer tokens: a JWT verified offline against a JWKS.
//! - [`policy`]: callers, the per-RPC policy tables, the grants the context
//!   map gives services, and the layer that enforces them.
//!
//! Secure by default: a server without a certificate or without token keys
//! refuses to start, unless `AGORA_INSECURE=1` says that this is wanted;
//! then it warns at every start and reports `agora_insecure 1`.

pub mod policy;
pub mod reload;
pub mod tls;
pub mod token;

pub use policy::{Access, Audit, Caller, Grant, Policy, Rule};

pub use crate::config::security::{
    CertificateFiles, DEFAULT_TRUST_DOMAIN, SecuritySettings, TokenSettings, insecure_opt_in,
};
