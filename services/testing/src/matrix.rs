//! The authorization matrix: every RPC of a service's policy table, called
//! by every kind of caller (forged tokens included), each with the exact
//! code the table and the context map promise. The table drives it, so an
//! RPC cannot be missed: a service's test supplies only how to call each
//! method, and a method it cannot call fails the matrix.

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agora_dev::{
    pki::Leaf,
    tokens::{Claims, Signer},
};
use agora_platform::security::{
    Access, Policy,
    policy::service_grants,
    tls::{ClientTls, client_config},
};
use base64::Engine as _;
use tonic::{Code, Status, service::interceptor::InterceptedService};

use crate::{Bearer, Channel, Who, pki, security::url};

/// A token a test forges, or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter)]
pub enum Forgery {
    /// No token and no client certificate.
    Anonymous,
    /// `Bearer` followed by something that is not a JWT.
    Garbled,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256, with the issuer's public key as the HMAC secret.
    Hs256WithPublicKey,
    /// Signed by another key under the issuer's key id.
    ForeignKey,
    /// Signed by another key under a key id the JWKS does not have.
    UnknownKid,
}

/// Every context of the context map, and those that call an upstream: the
/// services whose certificates, and whose service tokens, the matrix tries.
/// Read once; the names live as long as the test process.
fn contexts() -> &'static (Vec<&'static str>, Vec<&'static str>) {
    static CONTEXTS: OnceLock<(Vec<&'static str>, Vec<&'static str>)> = OnceLock::new();
    CONTEXTS.get_or_init(|| {
        let map: serde_json::Value =
            serde_json::from_str(agora_contracts::CONTEXT_MAP).expect("the context map is JSON");
        let leak = |name: &str| -> &'static str { Box::leak(name.to_owned().into_boxed_str()) };
        let contexts = map["contexts"].as_object().expect("contexts").keys().map(|c| leak(c)).collect();
        let mut downstreams: Vec<&'static str> = map["relations"]
            .as_array()
            .expect("relations")
            .iter()
            .map(|r| leak(r["downstream"].as_str().expect("a downstream")))
            .collect();
        downstreams.sort();
        downstreams.dedup();
        (contexts, downstreams)
    })
}

/// Who calls, in the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Staff,
    /// The customer the resource belongs to.
    Owner,
    /// A customer it does not belong to.
    OtherCustomer,
    /// An Agora service, by its client certificate.
    ServiceCert(&'static str),
    /// An Agora service, by a service token and no certificate.
    ServiceToken(&'static str),
    Forged(Forgery),
}

impl Role {
    /// Every role the matrix tries: the three kinds of end user, every
    /// context's certificate, a certificate of the CA that names a service
    /// no map knows, a service token, and every forgery.
    pub fn all() -> Vec<Role> {
        use strum::IntoEnumIterator as _;
        let mut roles = vec![Role::Staff, Role::Owner, Role::OtherCustomer];
        let (contexts, downstreams) = contexts();
        roles.extend(contexts.iter().copied().chain(["intruder"]).map(Role::ServiceCert));
        roles.extend(downstreams.iter().copied().map(Role::ServiceToken));
        roles.extend(Forgery::iter().map(Role::Forged));
        roles
    }

    /// The code the policy promises this role for an RPC with `access`
    /// that the context map grants to `services`.
    pub fn expected(self, access: Access, services: &[String]) -> Code {
        let allowed = match self {
            Role::Forged(_) => return Code::Unauthenticated,
            Role::Staff => matches!(access, Access::Staff | Access::Everyone | Access::StaffOrOwner),
            Role::Owner => matches!(access, Access::Everyone | Access::StaffOrOwner | Access::Owner),
            Role::OtherCustomer => access == Access::Everyone,
            Role::ServiceCert(name) | Role::ServiceToken(name) => services.iter().any(|s| s == name),
        };
        if allowed { Code::Ok } else { Code::PermissionDenied }
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A forged token (None: send none).
fn forged(forgery: Forgery, owner: &str) -> Option<String> {
    let pki = pki();
    let valid = || Claims::new(owner, &[], 3600);
    Some(match forgery {
        Forgery::Anonymous => return None,
        Forgery::Garbled => "not.a.jwt".into(),
        Forgery::Expired => pki.sign(&Claims { nbf: now() - 7200, exp: now() - 3600, ..valid() }),
        Forgery::NotYetValid => pki.sign(&Claims { nbf: now() + 3600, exp: now() + 7200, ..valid() }),
        Forgery::WrongIssuer => pki.sign(&Claims { iss: "https://issuer.example".into(), ..valid() }),
        Forgery::WrongAudience => pki.sign(&Claims { aud: "another-api".into(), ..valid() }),
        Forgery::AlgNone => {
            let claims = serde_json::to_vec(&valid()).expect("claims serialize");
            format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(&claims))
        }
        Forgery::Hs256WithPublicKey => {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some(pki.signer().kid().to_owned());
            let secret = jsonwebtoken::EncodingKey::from_secret(pki.signer().public_key_pem().as_bytes())
                .expect("any bytes make an HMAC key");
            jsonwebtoken::encode(&header, &valid(), &secret).expect("HS256 signs")
        }
        Forgery::ForeignKey => {
            Signer::generate(pki.signer().kid()).and_then(|s| s.sign(&valid())).expect("signing")
        }
        Forgery::UnknownKid => {
            Signer::generate("another-key").and_then(|s| s.sign(&valid())).expect("signing")
        }
    })
}

/// A certificate of the test CA naming `service`, as TLS of that service.
fn service_tls(service: &str) -> ClientTls {
    if service == "intruder" {
        let issued = pki().issue(&Leaf::service("intruder", agora_dev::layout::TRUST_DOMAIN));
        let config = client_config(
            pki().ca_pem().as_bytes(),
            Some((issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())),
        )
        .expect("client TLS");
        return ClientTls::fixed(config);
    }
    pki().service_tls(service)
}

/// The channel `role` calls the server at `addr` with, about a resource
/// of the customer `owner`.
pub fn channel(addr: SocketAddr, role: Role, owner: &str) -> Channel {
    let (tls, token) = match role {
        Role::Staff => (pki().client_tls(), pki().token(&Who::Staff)),
        Role::Owner => (pki().client_tls(), pki().token(&Who::customer(owner))),
        Role::OtherCustomer => (pki().client_tls(), pki().token(&Who::customer(format!("{owner}_other")))),
        Role::ServiceCert(name) => (service_tls(name), None),
        Role::ServiceToken(name) => (pki().client_tls(), pki().token(&Who::Service(name.into()))),
        Role::Forged(forgery) => (pki().client_tls(), forged(forgery, owner)),
    };
    let channel =
        tls.channel(&url(addr), |e| e.connect_timeout(Duration::from_secs(5))).expect("a valid URL");
    InterceptedService::new(channel, Bearer::new(token))
}

/// Calls every RPC of `policy` (the service of `context`) as every role,
/// with `call(method, role)`, and fails with every case whose code is not
/// the promised one. The policy must also stand in docs/SECURITY.md, row
/// for row.
pub async fn check<F>(context: &str, policy: &Policy, mut call: F)
where
    F: AsyncFnMut(&'static str, Role) -> Result<(), Status>,
{
    assert_documented(policy, context);
    let grants = service_grants(context);
    let mut wrong = Vec::new();
    let mut cases = 0;
    for rule in policy.rules {
        let services = grants.get(rule.method).cloned().unwrap_or_default();
        for role in Role::all() {
            cases += 1;
            let want = role.expected(rule.access, &services);
            let got = match call(rule.method, role).await {
                Ok(()) => Code::Ok,
                Err(status) => {
                    if status.code() != want {
                        wrong.push(format!("{} as {role:?}: {want:?} expected, got {status:?}", rule.method));
                    }
                    continue;
                }
            };
            if got != want {
                wrong.push(format!("{} as {role:?}: {want:?} expected, got OK", rule.method));
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {cases} cases wrong:\n{}", wrong.len(), wrong.join("\n"));
    assert_eq!(cases, policy.rules.len() * Role::all().len());
}

/// The rows of a policy as docs/SECURITY.md shows them: `| Method | who | audited |`.
pub fn doc_rows(policy: &Policy, context: &str) -> Vec<String> {
    let grants = service_grants(context);
    policy
        .rules
        .iter()
        .map(|rule| {
            let mut who = match rule.access {
                Access::Staff => vec!["staff".to_owned()],
                Access::Everyone => vec!["every customer".to_owned(), "staff".to_owned()],
                Access::StaffOrOwner => vec!["staff".to_owned(), "the owner".to_owned()],
                Access::Owner => vec!["the owner".to_owned()],
                Access::Services => vec![],
            };
            who.extend(grants.get(rule.method).into_iter().flatten().map(|s| format!("service {s}")));
            format!("| {} | {} | {} |", rule.method, who.join(", "), if rule.audit { "yes" } else { "" })
        })
        .collect()
}

/// Asserts that docs/SECURITY.md shows `policy` row for row.
pub fn assert_documented(policy: &Policy, context: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/SECURITY.md");
    let text = std::fs::read_to_string(path).expect("docs/SECURITY.md");
    let missing: Vec<String> =
        doc_rows(policy, context).into_iter().filter(|row| !text.contains(row)).collect();
    assert!(
        missing.is_empty(),
        "docs/SECURITY.md lacks these rows of {context}'s policy:\n{}",
        missing.join("\n")
    );
}
