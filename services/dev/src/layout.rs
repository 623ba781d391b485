//! Where development credentials live in a directory, and the environment
//! that runs a service with them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    pki::{Authority, Leaf},
    tokens::{AUDIENCE, ISSUER, Signer},
};

/// The services that get a certificate: every context of the context map
/// (`proto/context_map.json`).
pub fn services() -> Vec<String> {
    let map: serde_json::Value = serde_json::from_str(include_str!("../../../proto/context_map.json"))
        .expect("the context map is JSON");
    map["contexts"].as_object().expect("contexts in the context map").keys().cloned().collect()
}
/// The trust domain of development identities (the platform's default).
pub const TRUST_DOMAIN: &str = "agora.local";
/// The key id of the development signing key.
const KID: &str = "agora-dev";

/// A directory of development credentials.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The CA certificate: what clients (grpcurl `-cacert`) trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// A service's certificate chain.
    pub fn cert(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.pem"))
    }

    /// A service's private key.
    pub fn key(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.key"))
    }

    fn signing_key(&self) -> PathBuf {
        self.dir.join("signing.key")
    }

    /// The JWKS the services verify tokens with.
    pub fn jwks(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }

    /// Makes what is missing and renews what expires: the CA and the
    /// signing key are kept once made (so tokens and trust survive a
    /// restart); every service certificate is issued anew.
    pub fn ensure(&self) -> anyhow::Result<(Authority, Signer)> {
        let ca = self.authority()?;
        let signer = match std::fs::read_to_string(self.signing_key()) {
            Ok(pem) => Signer::load(KID, &pem)?,
            Err(_) => {
                let signer = Signer::generate(KID)?;
                write(&self.signing_key(), &signer.key_pem(), true)?;
                signer
            }
        };
        write(&self.jwks(), &signer.jwks()?, false)?;
        for service in services() {
            let issued = ca.issue(&Leaf::service(&service, TRUST_DOMAIN))?;
            write(&self.key(&service), &issued.key_pem, true)?;
            write(&self.cert(&service), &issued.cert_pem, false)?;
        }
        Ok((ca, signer))
    }

    /// The CA of the directory, made when missing.
    pub fn authority(&self) -> anyhow::Result<Authority> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        Ok(match (std::fs::read_to_string(self.ca_cert()), std::fs::read_to_string(self.ca_key())) {
            (Ok(cert), Ok(key)) => Authority::load(&cert, &key)?,
            _ => {
                let ca = Authority::generate()?;
                write(&self.ca_key(), &ca.key_pem(), true)?;
                write(&self.ca_cert(), ca.cert_pem(), false)?;
                ca
            }
        })
    }

    /// A server certificate `<name>.pem` (and `<name>.key`) of the
    /// directory's CA, for `localhost`, 127.0.0.1 and ::1: another server of
    /// this machine (PostgreSQL) that clients verify against the CA.
    pub fn server(&self, name: &str) -> anyhow::Result<()> {
        let issued = self.authority()?.issue(&Leaf { common_name: name.to_owned(), ..Leaf::localhost() })?;
        write(&self.key(name), &issued.key_pem, true)?;
        write(&self.cert(name), &issued.cert_pem, false)
    }

    /// The signing key, once [`Self::ensure`] made it.
    pub fn signer(&self) -> anyhow::Result<Signer> {
        let pem = std::fs::read_to_string(self.signing_key()).with_context(|| {
            format!("reading {}; run `agora-dev init` first", self.signing_key().display())
        })?;
        Signer::load(KID, &pem)
    }

    /// The variables that run `service` with these credentials: TLS with
    /// its certificate, client certificates verified against the CA,
    /// upstreams trusted through the same CA, tokens checked against the
    /// JWKS.
    pub fn env(&self, service: &str) -> Vec<(&'static str, String)> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            ("AGORA_TLS_CERT_FILE", path(self.cert(service))),
            ("AGORA_TLS_KEY_FILE", path(self.key(service))),
            ("AGORA_TLS_CLIENT_CA_FILE", path(self.ca_cert())),
            ("AGORA_JWKS_FILE", path(self.jwks())),
            ("AGORA_JWT_ISSUER", ISSUER.to_owned()),
            ("AGORA_JWT_AUDIENCE", AUDIENCE.to_owned()),
        ]
    }
}

/// Writes `contents` to `path`, readable by its owner only when `private`.
/// A new file is written beside it and renamed over it, so a service that
/// re-reads it never sees half a file.
fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&partial).with_context(|| format!("writing {}", partial.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
