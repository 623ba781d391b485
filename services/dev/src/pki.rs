//! A certificate authority for development and tests, with rcgen: ECDSA
//! P-256 keys, a CA certificate, and leaf certificates that serve TLS and
//! name a service for mTLS.

use std::net::IpAddr;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The CA's subject; a loaded CA is rebuilt with it, so certificates it
/// issues name the same issuer as the ones issued before.
const CA_NAME: &str = "Agora development CA";

/// A CA: its certificate (to trust) and its key (to issue with).
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl Authority {
    /// The development CA: a new key, valid for five years from yesterday.
    pub fn generate() -> anyhow::Result<Self> {
        Self::generate_named(CA_NAME)
    }

    /// A CA with another name (tests make strangers with it).
    pub fn generate_named(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(5 * 365);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The development CA from its certificate and key, as written by
    /// [`Self::generate`].
    pub fn load(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("reading the CA key")?;
        Ok(Self { cert_pem: cert_pem.to_owned(), issuer: Issuer::new(ca_params(CA_NAME), key) })
    }

    /// The CA certificate, to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, to keep beside it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A new key and a certificate for it, as `leaf` describes.
    pub fn issue(&self, leaf: &Leaf) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, leaf.common_name.as_str());
        params.subject_alt_names = leaf
            .dns
            .iter()
            .map(|name| Ok(SanType::DnsName(name.as_str().try_into()?)))
            .chain(leaf.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .chain(leaf.uris.iter().map(|uri| Ok(SanType::URI(uri.as_str().try_into()?))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub common_name: String,
    /// DNS names it serves.
    pub dns: Vec<String>,
    /// Addresses it serves.
    pub ips: Vec<IpAddr>,
    /// URI names: the service identity (`spiffe://<trust domain>/service/<name>`).
    pub uris: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Leaf {
    /// The certificate of service `name` on this machine: it serves
    /// `localhost`, `name`, 127.0.0.1 to 127.0.0.9 (replicas on loopback
    /// addresses of their own) and ::1, and names the service for mTLS.
    /// Valid for 90 days from yesterday.
    pub fn service(name: &str, trust_domain: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: name.to_owned(),
            dns: vec!["localhost".into(), name.to_owned()],
            ips: (1..=9)
                .map(|host| IpAddr::from([127, 0, 0, host]))
                .chain([IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])])
                .collect(),
            uris: vec![format!("spiffe://{trust_domain}/service/{name}")],
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(90),
        }
    }

    /// A certificate for this machine that names no service: an end
    /// user's, or a server's.
    pub fn localhost() -> Self {
        Self { dns: vec!["localhost".into()], uris: Vec::new(), ..Self::service("localhost", "-") }
    }

    /// The same leaf, expired since yesterday.
    pub fn expired(self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.valid(now - Duration::days(30), now - Duration::days(1))
    }

    /// The same leaf, valid between these instants.
    pub fn valid(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}
