//! Token signing for development and tests: an ECDSA P-256 key, its JWKS,
//! and ES256 JWTs with the claims Agora reads.

use anyhow::Context as _;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use rcgen::KeyPair;
use serde::Serialize;
use time::OffsetDateTime;

/// The issuer of development tokens (`AGORA_JWT_ISSUER` of `make run`).
pub const ISSUER: &str = "https://agora.local/dev-issuer";
/// The audience of Agora's services (`AGORA_JWT_AUDIENCE` of `make run`).
pub const AUDIENCE: &str = "agora";

/// A signing key and its key id.
pub struct Signer {
    kid: String,
    key: KeyPair,
}

impl Signer {
    /// A new key, named `kid` in tokens and in the JWKS.
    pub fn generate(kid: &str) -> anyhow::Result<Self> {
        Ok(Self { kid: kid.to_owned(), key: KeyPair::generate()? })
    }

    /// A key written by [`Self::key_pem`].
    pub fn load(kid: &str, key_pem: &str) -> anyhow::Result<Self> {
        Ok(Self { kid: kid.to_owned(), key: KeyPair::from_pem(key_pem).context("reading the signing key")? })
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The public key in PEM (tests sign HS256 tokens with it as the
    /// secret, as an attacker would).
    pub fn public_key_pem(&self) -> String {
        self.key.public_key_pem()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn encoding_key(&self) -> anyhow::Result<EncodingKey> {
        Ok(EncodingKey::from_ec_der(self.key.serialized_der()))
    }

    /// The JWKS that verifies this key's tokens.
    pub fn jwks(&self) -> anyhow::Result<String> {
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key()?, Algorithm::ES256)?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        Ok(serde_json::to_string_pretty(&JwkSet { keys: vec![jwk] })?)
    }

    /// A signed token with `claims`.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding_key()?)?)
    }
}

/// The claims of an Agora token.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// A customer id, a member of staff's id, or a service's name.
    pub sub: String,
    /// `staff`, `service`, or none for a customer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

impl Claims {
    /// A development token for `sub` with `roles`, valid from now for
    /// `ttl_seconds`.
    pub fn new(sub: &str, roles: &[&str], ttl_seconds: i64) -> Self {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Self {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: now,
            nbf: now,
            exp: now + ttl_seconds,
        }
    }
}
