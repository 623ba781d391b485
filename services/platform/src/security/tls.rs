//! TLS with rustls and its aws-lc-rs provider, on both sides of a call.
//!
//! The server side accepts TLS 1.3 only. When a client CA is configured
//! it asks every client for a certificate, verifies the ones presented
//! against that CA, and lets clients without one through (end users and
//! grpcurl send a token instead). The client side, for upstream calls,
//! verifies the upstream against the upstream CA and presents this
//! service's certificate. Both re-read their files when they change
//! ([`Reloading`]): new connections use the new certificate, open ones keep
//! theirs.
//!
//! The accept loop and the connector are written here, around
//! tokio-rustls, because tonic's own TLS settings are fixed when the server
//! or channel is built and so cannot rotate a certificate.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::Context as _;
use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::{CertificateFiles, SecuritySettings, reload::Reloading};

/// The one crypto provider of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file, in order.
pub fn certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().context("reading PEM")?;
    anyhow::ensure!(!certs.is_empty(), "no CERTIFICATE block in the PEM file");
    Ok(certs)
}

fn private_key(pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).context("expected a PEM private key (PKCS#8, PKCS#1 or SEC1)")
}

fn roots(pem: &[u8]) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem)? {
        roots.add(cert).context("a CA certificate that cannot be used")?;
    }
    Ok(Arc::new(roots))
}

/// A TLS 1.3 server configuration for gRPC (ALPN h2, and http/1.1 for
/// gRPC-Web clients that cannot do HTTP/2). With `client_ca`,
/// client certificates are asked for, optional, and verified when sent.
pub fn server_config(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> anyhow::Result<ServerConfig> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .allow_unauthenticated()
                .build()
                .context("building the client certificate verifier")?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .context("the certificate does not match its key")?;
    // rustls takes the first of these the client offers: HTTP/2 whenever
    // the client can.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS 1.3 client configuration for gRPC that trusts `ca` and, with
/// `identity` (certificate and key PEM), presents it.
pub fn client_config(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> anyhow::Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .context("the certificate does not match its key")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server's TLS configuration, kept current with its files.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Reloading<ServerConfig>,
}

impl ServerTls {
    /// From the certificate, key and client CA files of `settings`; None
    /// when no certificate is configured.
    pub fn start(settings: &SecuritySettings) -> anyhow::Result<Option<Self>> {
        let Some(CertificateFiles { cert, key }) = &settings.certificate else { return Ok(None) };
        let mut files = vec![cert.clone(), key.clone()];
        files.extend(settings.client_ca.clone());
        let config = Reloading::start("server certificate", files, settings.reload_interval, |files| {
            server_config(&files[0], &files[1], files.get(2).map(Vec::as_slice))
        })?;
        Ok(Some(Self { config }))
    }

    /// How many changes of its files were seen (tests wait on it).
    pub fn changes_seen(&self) -> u64 {
        self.config.changes_seen()
    }

    /// The configuration now, for the next handshake.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.config.get()
    }
}

/// The client side for upstream calls, kept current with its files.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    /// Trusts the upstream CA of `settings` and presents this service's
    /// certificate, when it has one. None without an upstream CA.
    pub fn start(settings: &SecuritySettings) -> anyhow::Result<Option<Self>> {
        let Some(ca) = &settings.upstream_ca else { return Ok(None) };
        let mut files = vec![ca.clone()];
        if let Some(CertificateFiles { cert, key }) = &settings.certificate {
            files.extend([cert.clone(), key.clone()]);
        }
        let config = Reloading::start("upstream TLS", files, settings.reload_interval, |files| {
            let identity = (files.len() == 3).then(|| (files[1].as_slice(), files[2].as_slice()));
            client_config(&files[0], identity)
        })?;
        Ok(Some(Self { config }))
    }

    /// Trusts `ca` only and presents no certificate, as an end user does.
    /// For tools and tests; nothing to reload.
    pub fn fixed(config: ClientConfig) -> Self {
        let config = Reloading::fixed("client TLS", config);
        Self { config }
    }

    /// A lazily connecting channel to `url` (`https://host:port`).
    pub fn channel(&self, url: &str, tune: impl FnOnce(Endpoint) -> Endpoint) -> anyhow::Result<Channel> {
        let origin: Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
        anyhow::ensure!(origin.scheme_str() == Some("https"), "{url:?} is not an https:// URL");
        // tonic's connector would look for its own TLS settings behind an
        // https:// address: it is given the http:// form to connect with
        // and sends the https:// origin in every call.
        let endpoint = Endpoint::from_shared(url.replacen("https://", "http://", 1))?.origin(origin);
        Ok(tune(endpoint).connect_with_connector_lazy(self.connector()))
    }

    /// A lazily connecting channel to one address of `url`'s host (a
    /// replica its name resolved to): connects to `addr`, verifies the
    /// certificate for the host of `url` and sends `url` as the origin.
    pub fn channel_to(
        &self,
        url: &str,
        addr: SocketAddr,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> anyhow::Result<Channel> {
        let origin: Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
        anyhow::ensure!(origin.scheme_str() == Some("https"), "{url:?} is not an https:// URL");
        let host = origin.host().with_context(|| format!("{url:?} names no host"))?;
        let name = host.trim_start_matches('[').trim_end_matches(']').into();
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.origin(origin);
        let connector = Connector { tls: self.clone(), name: Some(name) };
        Ok(tune(endpoint).connect_with_connector_lazy(connector))
    }

    /// The connector behind [`Self::channel`], for other HTTP/2 clients.
    pub fn connector(&self) -> Connector {
        Connector { tls: self.clone(), name: None }
    }
}

/// Connects over TCP and TLS with the configuration current at the time.
#[derive(Clone, Debug)]
pub struct Connector {
    tls: ClientTls,
    /// The name the server's certificate must carry, when it is not the
    /// host connected to (an address a name resolved to).
    name: Option<Arc<str>>,
}

impl tower::Service<Uri> for Connector {
    type Response = TlsIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.config.get();
        let expected = self.name.clone();
        Box::pin(async move {
            let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri} names no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let expected = expected.map_or_else(|| host.clone(), |name| name.to_string());
            let name =
                ServerName::try_from(expected.clone()).map_err(|e| invalid(format!("{expected}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TlsIo { inner: TokioIo::new(stream) })
        })
    }
}

/// A client TLS connection, as hyper's connection pools want it.
pub struct TlsIo {
    inner: TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        let (_, session) = self.inner.inner().get_ref();
        if session.alpn_protocol() == Some(b"h2") { connected.negotiated_h2() } else { connected }
    }
}

/// The Agora service a certificate names: its one URI SAN of the form
/// `spiffe://<trust_domain>/service/<name>`. None when there is no such
/// name, or more than one.
pub fn service_identity(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let prefix = format!("spiffe://{trust_domain}/service/");
    let mut names =
        cert.valid_uri_names().filter_map(|uri| uri.strip_prefix(prefix.as_str())).filter(|name| {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    let first = names.next()?;
    names.all(|other| other == first).then(|| first.to_owned())
}
