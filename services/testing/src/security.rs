//! Test credentials: a CA, a certificate per service, a token signing key
//! and its JWKS, made once per test process (the same code `make run`
//! uses), and the clients that use them: TLS channels carrying a token of
//! the caller a test plays.

use std::{net::SocketAddr, path::PathBuf, sync::OnceLock, time::Duration};

use agora_dev::{
    layout::{Layout, TRUST_DOMAIN},
    pki::{Authority, Issued, Leaf},
    tokens::{AUDIENCE, Claims, ISSUER, Signer},
};
use agora_platform::security::{
    CertificateFiles, SecuritySettings, TokenSettings,
    tls::{ClientTls, client_config},
};
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Endpoint,
};

/// The caller a test plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A member of staff (`roles: ["staff"]`).
    Staff,
    /// A customer: the token's subject is their id.
    Customer(String),
    /// A service, by a service token (`roles: ["service"]`).
    Service(String),
    /// No token at all.
    Nobody,
}

impl Who {
    pub fn customer(id: impl Into<String>) -> Self {
        Self::Customer(id.into())
    }
}

/// The credentials of this test process.
pub struct TestPki {
    layout: Layout,
    ca: Authority,
    signer: Signer,
}

/// The test process's credentials, made on first use.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = std::env::temp_dir().join("agora-test-pki");
        remove_dead(&root);
        let layout = Layout::new(root.join(std::process::id().to_string()));
        let (ca, signer) = layout.ensure().expect("making test credentials");
        TestPki { layout, ca, signer }
    })
}

/// Removes the credentials of test processes that are gone.
fn remove_dead(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let alive = std::path::Path::new("/proc").join(&name).exists();
        if name.parse::<u32>().is_ok() && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl TestPki {
    /// Settings that run `service` as production does: TLS with its own
    /// certificate, client certificates verified, upstreams verified
    /// against the CA, tokens checked; files re-read every 100 ms.
    pub fn security(&self, service: &str) -> SecuritySettings {
        SecuritySettings {
            certificate: Some(CertificateFiles {
                cert: self.layout.cert(service),
                key: self.layout.key(service),
            }),
            client_ca: Some(self.layout.ca_cert()),
            upstream_ca: Some(self.layout.ca_cert()),
            tokens: Some(TokenSettings {
                jwks: self.layout.jwks(),
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                leeway: Duration::from_secs(30),
            }),
            service_token: None,
            trust_domain: TRUST_DOMAIN.into(),
            reload_interval: Duration::from_millis(100),
            insecure: false,
        }
    }

    /// The environment that runs a service binary as [`Self::security`] does.
    pub fn env(&self, service: &str) -> Vec<(&'static str, String)> {
        let mut env = self.layout.env(service);
        env.push(("AGORA_SECURITY_RELOAD_MS", "100".into()));
        env
    }

    /// The directory of the credentials (a test writes more files there).
    pub fn dir(&self) -> PathBuf {
        self.layout.dir.clone()
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A new certificate from the test CA.
    pub fn issue(&self, leaf: &Leaf) -> Issued {
        self.ca.issue(leaf).expect("issuing a test certificate")
    }

    /// A token for `who`, valid for an hour (None for [`Who::Nobody`]).
    pub fn token(&self, who: &Who) -> Option<String> {
        let claims = match who {
            Who::Staff => Claims::new("staff-1", &["staff"], 3600),
            Who::Customer(id) => Claims::new(id, &[], 3600),
            Who::Service(name) => Claims::new(name, &["service"], 3600),
            Who::Nobody => return None,
        };
        Some(self.sign(&claims))
    }

    /// `claims` signed with the key of the JWKS.
    pub fn sign(&self, claims: &Claims) -> String {
        self.signer.sign(claims).expect("signing a test token")
    }

    /// The signing key (tests sign forged tokens around it).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// TLS as an end user has it: trusts the CA, presents no certificate.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::fixed(client_config(self.ca_pem().as_bytes(), None).expect("client TLS"))
    }

    /// TLS as `service` has it: presents its certificate.
    pub fn service_tls(&self, service: &str) -> ClientTls {
        let read = |p: PathBuf| std::fs::read(p).expect("reading a test credential");
        let (cert, key) = (read(self.layout.cert(service)), read(self.layout.key(service)));
        ClientTls::fixed(client_config(self.ca_pem().as_bytes(), Some((&cert, &key))).expect("client TLS"))
    }
}

/// Sends a bearer token with every call, when it has one.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    pub fn new(token: Option<String>) -> Self {
        Self(token.map(|t| MetadataValue::try_from(format!("Bearer {t}")).expect("a token is ASCII")))
    }

    /// The token of `who`.
    pub fn of(who: &Who) -> Self {
        Self::new(pki().token(who))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to a test server, carrying its caller's token.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// The URL of a TLS server at `addr`.
pub fn url(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint.connect_timeout(Duration::from_secs(5))
}

/// A lazily connecting TLS channel to `addr`, as `who`, over `tls`.
pub fn tls_channel(addr: SocketAddr, tls: &ClientTls, who: &Who) -> Channel {
    let channel = tls.channel(&url(addr), tune).expect("a valid URL");
    InterceptedService::new(channel, Bearer::of(who))
}

/// A lazily connecting TLS channel to `addr`, as `who` would call.
pub fn channel_as(addr: SocketAddr, who: &Who) -> Channel {
    tls_channel(addr, &pki().client_tls(), who)
}

/// A lazily connecting plaintext channel to `addr`, without a token: for
/// admin ports and servers started insecure.
pub fn plain_channel(addr: SocketAddr) -> Channel {
    let channel = tune(Endpoint::from_shared(format!("http://{addr}")).expect("valid URI")).connect_lazy();
    InterceptedService::new(channel, Bearer::default())
}
