//! Who may call what.
//!
//! A call comes from a [`Caller`]: a customer or a member of staff (a
//! bearer token), or an Agora service (the service identity in its client
//! certificate, or a service token). Each service declares its [`Policy`]
//! once, next to its gRPC adapter: for every RPC, which end users may call
//! it ([`Access`]) and whether the call is audited. Services never appear in
//! a policy: the context map (`proto/context_map.json`) grants each
//! downstream exactly the calls and the feed it declares, and nothing else.
//!
//! The [`AuthorizeLayer`] enforces the table before a handler runs:
//! UNAUTHENTICATED for a caller it cannot identify, PERMISSION_DENIED for
//! one the table does not allow. Where the answer depends on who owns the
//! resource, it hands the handler a [`Grant`], and the handler asks it
//! before it reads or changes anything. A customer is refused alike
//! whether another customer's resource exists or not (AIP-211), so ids
//! cannot be probed.

use std::{collections::HashMap, fmt, sync::Arc};

use http::{Request, Response};
use serde::Deserialize;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::{
    tls,
    token::{Rejection, SERVICE_ROLE, STAFF_ROLE, Verifier},
};
use crate::{
    Error,
    middleware::{CallNotes, delegate_to_inner},
};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An end user; the token's subject is their customer id.
    Customer(String),
    /// A member of staff (the `staff` role), by their subject.
    Staff(String),
    /// An Agora service, by its context name (`offers`).
    Service(String),
    /// Nobody checked: token authentication is off (`AGORA_INSECURE=1`).
    Anonymous,
}

impl fmt::Display for Caller {
    /// Ids only, for logs and the audit trail.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Customer(id) => write!(f, "customer:{id}"),
            Self::Staff(id) => write!(f, "staff:{id}"),
            Self::Service(name) => write!(f, "service:{name}"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// Which end users may call an RPC. Services are granted by the context map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Staff only.
    Staff,
    /// Every customer and staff: public reads.
    Everyone,
    /// Staff, and the customer the resource belongs to.
    StaffOrOwner,
    /// Only the customer the resource belongs to; not even staff.
    Owner,
    /// No end user: only the services the context map names.
    Services,
}

/// The policy of one RPC.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The method's name (`GetProduct`).
    pub method: &'static str,
    pub access: Access,
    /// Leaves an audit line (who, what, which resource, outcome).
    pub audit: bool,
}

impl Rule {
    pub const fn new(method: &'static str, access: Access) -> Self {
        Self { method, access, audit: false }
    }

    /// The same rule, audited.
    pub const fn audited(self) -> Self {
        Self { audit: true, ..self }
    }
}

/// The policy of one gRPC service: every method, once.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The fully qualified service (`agora.catalog.v1.CatalogService`).
    pub service: &'static str,
    pub rules: &'static [Rule],
}

impl Policy {
    pub fn rule(&self, method: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.method == method)
    }
}

/// What the caller was allowed for this call. Handlers of owner-scoped RPCs
/// ask it before they read or change a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Any resource: staff, a service, a public read, or no checks at all.
    Any,
    /// Only resources of this customer.
    Owner(String),
}

/// The answer to a caller who may not do this, whatever the reason.
fn denied() -> Error {
    Error::PermissionDenied("the caller may not do this".into())
}

impl Grant {
    /// The grant of the call `req`. A call the layer did not grant (a
    /// server built without it) is refused: authorization fails closed.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<&Self, Error> {
        req.extensions().get::<Self>().ok_or_else(denied)
    }

    /// The grant of the call `req`, and its message.
    pub fn split<T>(req: tonic::Request<T>) -> Result<(Self, T), Error> {
        let grant = Self::of(&req)?.clone();
        Ok((grant, req.into_inner()))
    }

    /// Ok when the caller may act on what belongs to `owner`.
    pub fn check_owner(&self, owner: &str) -> Result<(), Error> {
        match self {
            Self::Any => Ok(()),
            Self::Owner(id) if id == owner => Ok(()),
            Self::Owner(_) => Err(denied()),
        }
    }

    /// `found` (a resource looked up by id) when the caller may see it.
    /// `owner` tells whose it is: None for one meant for everyone. A
    /// customer who asks for a resource that does not exist is refused as
    /// for another customer's.
    pub fn owned<T>(
        &self,
        found: Result<T, Error>,
        owner: impl FnOnce(&T) -> Option<&str>,
    ) -> Result<T, Error> {
        match (self, found) {
            (Self::Any, found) => found,
            (Self::Owner(_), Err(Error::NotFound { .. })) => Err(denied()),
            (Self::Owner(_), Err(other)) => Err(other),
            (Self::Owner(id), Ok(resource)) => match owner(&resource) {
                Some(owner) if owner != id => Err(denied()),
                _ => Ok(resource),
            },
        }
    }
}

/// Where a handler notes the resource an audited call acts on, for the
/// call's audit line (written when the call ends, with its outcome).
pub struct Audit(Option<CallNotes>);

impl Audit {
    /// The audit of the call `req`; take it before the request is consumed.
    pub fn of<T>(req: &tonic::Request<T>) -> Self {
        Self(req.extensions().get::<CallNotes>().cloned())
    }

    /// The call acts on `resource` (an id).
    pub fn resource(&self, resource: &str) {
        if let Some(notes) = &self.0 {
            notes.set_resource(resource);
        }
    }
}

/// The relations of `proto/context_map.json` that grant calls.
#[derive(Debug, Deserialize)]
struct ContextMap {
    relations: Vec<Relation>,
}

#[derive(Debug, Deserialize)]
struct Relation {
    downstream: String,
    upstream: String,
    #[serde(default)]
    calls: Vec<String>,
    feed: Option<String>,
}

/// The services the context map lets call `context`'s RPCs, by method name.
pub fn service_grants(context: &str) -> HashMap<String, Vec<String>> {
    let map: ContextMap = serde_json::from_str(agora_contracts::CONTEXT_MAP)
        .expect("proto/context_map.json is checked by tests");
    let mut grants: HashMap<String, Vec<String>> = HashMap::new();
    for relation in map.relations.into_iter().filter(|r| r.upstream == context) {
        for method in relation.calls.into_iter().chain(relation.feed) {
            grants.entry(method).or_default().push(relation.downstream.clone());
        }
    }
    grants
}

/// The decision table of one server: every served RPC by path.
struct Entry {
    method: &'static str,
    rule: Rule,
    services: Vec<String>,
}

impl Entry {
    /// What `caller` may do here, or None.
    fn decide(&self, caller: &Caller) -> Option<Grant> {
        match (caller, self.rule.access) {
            (Caller::Anonymous, _) => Some(Grant::Any),
            (Caller::Service(name), _) => self.services.contains(name).then_some(Grant::Any),
            (Caller::Staff(_), Access::Staff | Access::Everyone | Access::StaffOrOwner) => Some(Grant::Any),
            (Caller::Customer(_), Access::Everyone) => Some(Grant::Any),
            (Caller::Customer(id), Access::StaffOrOwner | Access::Owner) => Some(Grant::Owner(id.clone())),
            _ => None,
        }
    }
}

/// Authentication and the decision table of one server.
pub struct Authorizer {
    table: HashMap<String, Entry>,
    verifier: Option<Verifier>,
    trust_domain: String,
}

impl Authorizer {
    /// The table of the server of `context` that serves `served` (each
    /// service's name and its methods), from `policies` and the context
    /// map. Fails when a served method has no rule, a rule names no served
    /// method, or the map names a method this context does not serve.
    pub fn new(
        context: &str,
        served: &[(String, Vec<String>)],
        policies: &[Policy],
        verifier: Option<Verifier>,
        trust_domain: String,
    ) -> anyhow::Result<Self> {
        let mut grants = service_grants(context);
        let mut table = HashMap::new();
        let mut problems = Vec::new();
        for (service, methods) in served {
            let Some(policy) = policies.iter().find(|p| p.service == service) else {
                problems.push(format!("{service} has no policy"));
                continue;
            };
            for method in methods {
                match policy.rule(method) {
                    Some(rule) => {
                        let services = grants.remove(method).unwrap_or_default();
                        let entry = Entry { method: rule.method, rule: *rule, services };
                        table.insert(format!("/{service}/{method}"), entry);
                    }
                    None => problems.push(format!("{service}/{method} has no policy rule")),
                }
            }
            for rule in policy.rules {
                if !methods.iter().any(|m| m == rule.method) {
                    problems.push(format!(
                        "the policy of {service} names {}, which it does not serve",
                        rule.method
                    ));
                }
            }
        }
        for method in grants.keys() {
            problems.push(format!("the context map grants {method} of {context}, which it does not serve"));
        }
        anyhow::ensure!(problems.is_empty(), "authorization policy: {}", problems.join("; "));
        Ok(Self { table, verifier, trust_domain })
    }

    /// Who `req` comes from: its bearer token, else the service its client
    /// certificate names. With token checks off, anyone.
    fn authenticate<B>(&self, req: &Request<B>) -> Result<Caller, Rejection> {
        let Some(verifier) = &self.verifier else {
            return Ok(self.peer_service(req).map(Caller::Service).unwrap_or(Caller::Anonymous));
        };
        if let Some(value) = req.headers().get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .ok_or(Rejection::Malformed)?;
            let claims = verifier.verify(token.trim())?;
            let has = |role: &str| claims.roles.iter().any(|r| r == role);
            return Ok(if has(SERVICE_ROLE) {
                Caller::Service(claims.sub)
            } else if has(STAFF_ROLE) {
                Caller::Staff(claims.sub)
            } else {
                Caller::Customer(claims.sub)
            });
        }
        self.peer_service(req).map(Caller::Service).ok_or(Rejection::Missing)
    }

    /// The service identity of the verified client certificate, if any.
    fn peer_service<B>(&self, req: &Request<B>) -> Option<String> {
        let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
        let certs = info.peer_certs()?;
        tls::service_identity(certs.first()?, &self.trust_domain)
    }
}

/// Authenticates every call but health's, and authorizes it by the table.
#[derive(Clone)]
pub struct AuthorizeLayer {
    authorizer: Arc<Authorizer>,
}

impl AuthorizeLayer {
    pub fn new(authorizer: Authorizer) -> Self {
        Self { authorizer: Arc::new(authorizer) }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner, authorizer: self.authorizer.clone() }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

fn refuse<B: Default>(reason: &'static str, status: tonic::Status) -> Response<B> {
    metrics::counter!("agora_auth_rejections_total", "reason" => reason).increment(1);
    status.into_http()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Authorize<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Future =
        futures_util::future::Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;
    delegate_to_inner!(passthrough);

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        use futures_util::future::Either;
        // Probes carry no credentials.
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Either::Left(self.inner.call(req));
        }
        let caller = match self.authorizer.authenticate(&req) {
            Ok(caller) => caller,
            Err(rejection) => {
                let status = tonic::Status::unauthenticated(rejection.message());
                return Either::Right(std::future::ready(Ok(refuse(rejection.reason(), status))));
            }
        };
        // Reflection, and paths no service serves (which the router
        // answers UNIMPLEMENTED), need an authenticated caller only.
        let entry = self.authorizer.table.get(req.uri().path());
        let grant = match entry {
            Some(entry) => match entry.decide(&caller) {
                Some(grant) => grant,
                None => {
                    let status =
                        tonic::Status::permission_denied(format!("{caller} may not call {}", entry.method));
                    return Either::Right(std::future::ready(Ok(refuse("forbidden", status))));
                }
            },
            None => Grant::Any,
        };
        if let Some(notes) = req.extensions().get::<CallNotes>() {
            notes.set_caller(&caller, entry.is_some_and(|e| e.rule.audit));
        }
        req.extensions_mut().insert(grant);
        req.extensions_mut().insert(caller);
        Either::Left(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_map_grants_downstreams_their_calls_and_feeds() {
        let catalog = service_grants("catalog");
        assert_eq!(catalog["GetProduct"], ["offers", "shopping"]);
        assert_eq!(catalog["WatchCatalogEvents"], ["offers", "shopping"]);
        assert_eq!(catalog.len(), 2);
        assert!(service_grants("offers").is_empty(), "nobody calls offers");
    }

    #[test]
    fn a_served_rpc_without_a_rule_or_a_rule_without_an_rpc_stops_the_server() {
        const SERVICE: &str = "agora.catalog.v1.CatalogService";
        const RULES: &[Rule] = &[
            Rule::new("GetProduct", Access::Everyone),
            Rule::new("WatchCatalogEvents", Access::Services),
            Rule::new("DeleteEverything", Access::Staff),
        ];
        let methods = ["GetProduct", "WatchCatalogEvents", "CreateFamily"].map(String::from).to_vec();
        let served = [(SERVICE.to_owned(), methods)];
        let policy = Policy { service: SERVICE, rules: RULES };
        let err = Authorizer::new("catalog", &served, &[policy], None, "agora.local".into()).err().unwrap();
        let text = err.to_string();
        assert!(text.contains("CreateFamily has no policy rule"), "{text}");
        assert!(text.contains("names DeleteEverything, which it does not serve"), "{text}");
        let unmapped = [(SERVICE.to_owned(), vec!["GetProduct".to_owned()])];
        let policy = Policy { service: SERVICE, rules: &RULES[..1] };
        let err = Authorizer::new("catalog", &unmapped, &[policy], None, "agora.local".into()).err().unwrap();
        assert!(err.to_string().contains("grants WatchCatalogEvents of catalog"), "{err}");
    }

    #[test]
    fn a_customer_is_refused_alike_for_others_and_for_nothing() {
        let grant = Grant::Owner("cus_a".into());
        let missing = Err::<(), _>(Error::NotFound { resource: "list", id: "x".into() });
        let others = grant.owned(Ok("cus_b"), |owner| Some(*owner)).unwrap_err();
        let nothing = grant.owned(missing, |_| None).unwrap_err();
        assert_eq!(others.to_string(), nothing.to_string());
        assert!(matches!(others, Error::PermissionDenied(_)));
        assert_eq!(grant.owned(Ok("cus_a"), |owner| Some(*owner)).unwrap(), "cus_a");
        assert!(grant.owned(Ok(""), |_| None).is_ok(), "a resource meant for everyone");
        assert!(Grant::Any.check_owner("cus_b").is_ok());
    }
}
