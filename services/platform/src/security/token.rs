//! Bearer tokens: `authorization: Bearer <JWT>`, verified offline with
//! jsonwebtoken against the issuer's JWKS (a file, reloaded when it
//! changes).
//!
//! A token is accepted when it is signed with an asymmetric algorithm of
//! [`ALGORITHMS`] (never `none`, never HMAC) by a key of the JWKS (the one
//! its `kid` names, or the only key), names the configured issuer and
//! audience, has a subject, and is within `nbf` and `exp` give or take the
//! leeway. Tokens never reach a log, an error message or a metric: a
//! rejection is described by its [`Rejection`] only.
//!
//! A client sends the same token with every call until it renews it, and
//! checking a signature costs more than serving a read (BENCHMARKS.md), so
//! a verified token is remembered ([`Verified`]) and, while the JWKS is the
//! same, only its times are checked again.

use std::{
    collections::HashMap,
    str::FromStr as _,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, JwkSet, PublicKeyUse},
};
use serde::Deserialize;

use super::{TokenSettings, reload::Reloading};

/// The algorithms a token may be signed with: asymmetric ones only.
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The role claim value that makes a caller staff.
pub const STAFF_ROLE: &str = "staff";
/// The role claim value of a service's token (where mTLS is off).
pub const SERVICE_ROLE: &str = "service";

/// Why a call was not authenticated: the `reason` label of
/// `agora_auth_rejections_total` and the end of the UNAUTHENTICATED message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization` header, and no client certificate that names a service.
    Missing,
    /// Not `Bearer <JWT>`, or not a JWT, or claims missing.
    Malformed,
    /// Signed with an algorithm that is not accepted (`none`, HMAC, ...).
    Algorithm,
    /// Its `kid` names no key of the JWKS.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
        }
    }

    /// For the caller: what to fix, never the token.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "no credentials: send authorization: Bearer <token>",
            Self::Malformed => "the bearer token is not a well-formed JWT with sub, iss, aud and exp",
            Self::Algorithm => "the bearer token is signed with an algorithm that is not accepted",
            Self::UnknownKey => "the bearer token is signed by an unknown key",
            Self::Signature => "the bearer token's signature does not verify",
            Self::Expired => "the bearer token has expired",
            Self::NotYetValid => "the bearer token is not valid yet",
            Self::Issuer => "the bearer token is from another issuer",
            Self::Audience => "the bearer token is for another audience",
        }
    }
}

/// The claims Agora reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// A customer's id, a member of staff's id, or a service's name.
    pub sub: String,
    /// RFC 9068's `roles`: `staff`, `service`, or none for a customer.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Seconds since the epoch: not valid after (required).
    pub exp: i64,
    /// Seconds since the epoch: not valid before, when given.
    pub nbf: Option<i64>,
}

/// One usable key of the JWKS.
struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when the JWKS says.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// The verification keys, as last loaded.
struct Keys(Vec<Key>);

fn parse_jwks(json: &[u8]) -> anyhow::Result<Keys> {
    let set: JwkSet = serde_json::from_slice(json).context("not a JWKS document")?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let kid = jwk.common.key_id.clone();
        anyhow::ensure!(
            !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)),
            "key {kid:?} is symmetric: only public keys are accepted"
        );
        let alg = match &jwk.common.key_algorithm {
            Some(alg) => {
                let alg = Algorithm::from_str(&alg.to_string())
                    .map_err(|_| anyhow::anyhow!("key {kid:?}: algorithm {alg} is not accepted"))?;
                anyhow::ensure!(ALGORITHMS.contains(&alg), "key {kid:?}: algorithm {alg:?} is not accepted");
                Some(alg)
            }
            None => None,
        };
        let key = DecodingKey::from_jwk(jwk).with_context(|| format!("key {kid:?} cannot be used"))?;
        keys.push(Key { kid, alg, key });
    }
    anyhow::ensure!(!keys.is_empty(), "the JWKS holds no signature key");
    Ok(Keys(keys))
}

/// Tokens already verified, by their text, with the keys they were
/// verified with. Written by hand: a map cleared when it is full is all it
/// takes, since an entry is good for a token's lifetime at most and a
/// client renews its token long before a busy server meets this bound;
/// the cache crates' eviction policies would buy nothing here.
#[derive(Default)]
struct Verified(RwLock<HashMap<Box<str>, Remembered>>);

/// The keys a token was verified with, and its claims.
type Remembered = (Arc<Keys>, Claims);

/// Tokens remembered at most; the map is emptied when it reaches this.
const VERIFIED_BOUND: usize = 10_000;

impl Verified {
    /// The claims of `token` when it was verified with `keys`.
    fn get(&self, token: &str, keys: &Arc<Keys>) -> Option<Claims> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let (verified_with, claims) = map.get(token)?;
        Arc::ptr_eq(verified_with, keys).then(|| claims.clone())
    }

    fn put(&self, token: &str, keys: Arc<Keys>, claims: Claims) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= VERIFIED_BOUND {
            map.clear();
        }
        map.insert(token.into(), (keys, claims));
    }
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Reloading<Keys>,
    verified: Arc<Verified>,
    leeway: i64,
    /// Issuer, audience, leeway and required claims, one for each
    /// accepted algorithm (a token is checked with its own).
    validations: Vec<Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the JWKS of `settings` and watches it for changes.
    pub fn start(settings: &TokenSettings, every: Duration) -> anyhow::Result<Self> {
        let keys =
            Reloading::start("JWKS", vec![settings.jwks.clone()], every, |files| parse_jwks(&files[0]))?;
        let validations = ALGORITHMS
            .iter()
            .map(|alg| {
                let mut validation = Validation::new(*alg);
                validation.set_issuer(&[&settings.issuer]);
                validation.set_audience(&[&settings.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.validate_nbf = true;
                validation.leeway = settings.leeway.as_secs();
                validation
            })
            .collect();
        Ok(Self { keys, validations, verified: Arc::default(), leeway: settings.leeway.as_secs() as i64 })
    }

    /// The claims of a valid `token`, or why it is not.
    pub fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        let keys = self.keys.get();
        let claims = match self.verified.get(token, &keys) {
            Some(claims) => claims,
            None => {
                let claims = self.check(token, &keys)?;
                self.verified.put(token, keys, claims.clone());
                claims
            }
        };
        // The times again, as the signature check did them: a remembered
        // token expires like any other.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        if claims.exp < now - self.leeway {
            return Err(Rejection::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + self.leeway) {
            return Err(Rejection::NotYetValid);
        }
        Ok(claims)
    }

    /// The signature, the algorithm, the issuer, the audience and the times of `token`.
    fn check(&self, token: &str, keys: &Keys) -> Result<Claims, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        let validation = ALGORITHMS
            .iter()
            .position(|alg| *alg == header.alg)
            .map(|i| &self.validations[i])
            .ok_or(Rejection::Algorithm)?;
        let key = match &header.kid {
            Some(kid) => keys.0.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
            None if keys.0.len() == 1 => keys.0.first(),
            None => None,
        }
        .ok_or(Rejection::UnknownKey)?;
        if key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(Rejection::Algorithm);
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Rejection::Signature,
                ErrorKind::ExpiredSignature => Rejection::Expired,
                ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                ErrorKind::InvalidIssuer => Rejection::Issuer,
                ErrorKind::InvalidAudience => Rejection::Audience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
                    Rejection::Algorithm
                }
                _ => Rejection::Malformed,
            })?;
        if data.claims.sub.is_empty() {
            return Err(Rejection::Malformed);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remembered token is checked for its times at every call, and a
    /// new JWKS makes the verifier forget what it verified with the old.
    #[tokio::test]
    async fn remembered_tokens_still_expire_and_are_forgotten_with_their_keys() {
        use agora_dev::tokens::{AUDIENCE, ISSUER, Signer};
        let first = Signer::generate("first").unwrap();
        let (dir, jwks) = crate::scratch_file("verifier", "jwks.json", first.jwks().unwrap());
        let settings = TokenSettings {
            jwks: jwks.clone(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway: Duration::ZERO,
        };
        let verifier = Verifier::start(&settings, Duration::from_millis(10)).unwrap();
        let token = first.sign(&agora_dev::tokens::Claims::new("cus_1", &[], 600)).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().sub, "cus_1");

        // Its time passes while it is remembered.
        let keys = verifier.keys.get();
        let mut claims = verifier.verified.get(&token, &keys).expect("remembered");
        claims.exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - 1;
        verifier.verified.put(&token, keys, claims);
        assert_eq!(verifier.verify(&token).unwrap_err(), Rejection::Expired);

        // A new JWKS without its key: the token is checked again, and refused.
        let fresh = first.sign(&agora_dev::tokens::Claims::new("cus_2", &[], 600)).unwrap();
        assert!(verifier.verify(&fresh).is_ok());
        std::fs::write(&jwks, Signer::generate("second").unwrap().jwks().unwrap()).unwrap();
        let mut refused = false;
        for _ in 0..500 {
            if matches!(verifier.verify(&fresh), Err(Rejection::UnknownKey)) {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "a token of a removed key was still accepted");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
