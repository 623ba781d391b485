//! Security settings: TLS, bearer tokens and the insecure opt-out,
//! read and checked at start. [`security`](crate::security) enforces them.

use std::{path::PathBuf, time::Duration};

use super::EnvReader;

/// The service identity in certificates: a URI SAN
/// `spiffe://<trust domain>/service/<name>`.
pub const DEFAULT_TRUST_DOMAIN: &str = "agora.local";

/// Where a server's certificate and key are (PEM).
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first (`AGORA_TLS_CERT_FILE`).
    pub cert: PathBuf,
    /// Its private key, PKCS#8, PKCS#1 or SEC1 (`AGORA_TLS_KEY_FILE`).
    pub key: PathBuf,
}

/// How bearer tokens are checked.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The issuer's public keys, a JWKS document (`AGORA_JWKS_FILE`).
    pub jwks: PathBuf,
    /// The one accepted `iss` (`AGORA_JWT_ISSUER`).
    pub issuer: String,
    /// The `aud` a token must name (`AGORA_JWT_AUDIENCE`).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf` (`AGORA_JWT_LEEWAY_S`).
    pub leeway: Duration,
}

/// The security settings of one process.
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    /// TLS on the gRPC port, and the certificate presented to upstreams.
    pub certificate: Option<CertificateFiles>,
    /// CA certificates that sign services' client certificates
    /// (`AGORA_TLS_CLIENT_CA_FILE`). When set, the server asks every client
    /// for a certificate (none is fine: end users send tokens) and verifies
    /// the ones presented.
    pub client_ca: Option<PathBuf>,
    /// CA certificates that sign upstreams' server certificates
    /// (`AGORA_UPSTREAM_CA_FILE`, else `AGORA_TLS_CLIENT_CA_FILE`).
    pub upstream_ca: Option<PathBuf>,
    /// Bearer tokens from end users and staff.
    pub tokens: Option<TokenSettings>,
    /// A token this service sends to upstreams where they do not verify
    /// client certificates (`AGORA_SERVICE_TOKEN_FILE`).
    pub service_token: Option<PathBuf>,
    /// The trust domain of service identities (`AGORA_TRUST_DOMAIN`).
    pub trust_domain: String,
    /// How often the files above are checked for changes (`AGORA_SECURITY_RELOAD_MS`).
    pub reload_interval: Duration,
    /// Serve without TLS or without token checks where they are not
    /// configured (`AGORA_INSECURE=1`).
    pub insecure: bool,
}

/// `AGORA_INSECURE`, read the same way wherever it matters.
pub fn insecure_opt_in<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> bool {
    match env.optional("AGORA_INSECURE").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("0" | "false" | "no") => false,
        Some("1" | "true" | "yes") => true,
        Some(other) => {
            env.problem(format!("AGORA_INSECURE={other:?}: expected 1 or 0"));
            false
        }
    }
}

impl SecuritySettings {
    /// From `AGORA_TLS_*`, `AGORA_JWKS_FILE`, `AGORA_JWT_*`,
    /// `AGORA_SERVICE_TOKEN_FILE`, `AGORA_TRUST_DOMAIN` and `AGORA_INSECURE`.
    pub fn read<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Self {
        let path = |env: &mut EnvReader<F>, name: &str| env.optional(name).map(PathBuf::from);
        let certificate = match (path(env, "AGORA_TLS_CERT_FILE"), path(env, "AGORA_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => Some(CertificateFiles { cert, key }),
            (None, None) => None,
            _ => {
                env.problem(
                    "AGORA_TLS_CERT_FILE and AGORA_TLS_KEY_FILE: set both (a PEM certificate chain and its key) or neither"
                        .into(),
                );
                None
            }
        };
        let client_ca = path(env, "AGORA_TLS_CLIENT_CA_FILE");
        let upstream_ca = path(env, "AGORA_UPSTREAM_CA_FILE").or_else(|| client_ca.clone());
        let tokens = match (
            path(env, "AGORA_JWKS_FILE"),
            env.optional("AGORA_JWT_ISSUER"),
            env.optional("AGORA_JWT_AUDIENCE"),
        ) {
            (Some(jwks), Some(issuer), Some(audience)) => Some(TokenSettings {
                jwks,
                issuer,
                audience,
                leeway: Duration::from_secs(env.number("AGORA_JWT_LEEWAY_S", 30, 0..=300)),
            }),
            (None, None, None) => None,
            _ => {
                env.problem(
                    "AGORA_JWKS_FILE, AGORA_JWT_ISSUER and AGORA_JWT_AUDIENCE: set all three (the \
                     issuer's keys, its iss and the audience tokens must name) or none"
                        .into(),
                );
                None
            }
        };
        let trust_domain = env.string("AGORA_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN);
        if trust_domain.is_empty()
            || !trust_domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            env.problem(format!(
                "AGORA_TRUST_DOMAIN={trust_domain:?}: expected a domain name, such as agora.local"
            ));
        }
        let insecure = insecure_opt_in(env);
        let missing: Vec<&str> = [
            certificate.is_none().then_some("AGORA_TLS_CERT_FILE and AGORA_TLS_KEY_FILE (TLS)"),
            tokens.is_none().then_some(
                "AGORA_JWKS_FILE, AGORA_JWT_ISSUER and AGORA_JWT_AUDIENCE (caller authentication)",
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !missing.is_empty() && !insecure {
            env.problem(format!(
                "not set: {}. Agora serves no plaintext or anonymous calls: set them, or set \
                 AGORA_INSECURE=1 to run without (for development only)",
                missing.join("; ")
            ));
        }
        Self {
            certificate,
            client_ca,
            upstream_ca,
            tokens,
            service_token: path(env, "AGORA_SERVICE_TOKEN_FILE"),
            trust_domain,
            reload_interval: env.millis("AGORA_SECURITY_RELOAD_MS", 10_000, 50..=3_600_000),
            insecure,
        }
    }

    /// No TLS, no tokens: every call anonymous and allowed. Tests of the
    /// runtime that are not about security start from this.
    pub fn insecure() -> Self {
        Self {
            certificate: None,
            client_ca: None,
            upstream_ca: None,
            tokens: None,
            service_token: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            reload_interval: Duration::from_millis(100),
            insecure: true,
        }
    }

    /// What is switched off, for the warning and the metric.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.certificate.is_none() {
            missing.push("tls");
        }
        if self.tokens.is_none() {
            missing.push("authentication");
        }
        missing
    }
}
