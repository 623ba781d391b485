//! How change feeds travel between contexts (`AGORA_EVENTS`) and, on
//! NATS JetStream, where NATS is and how a service is known to it. The
//! settings only: [`events`](crate::events) connects and relays.

use std::{path::PathBuf, time::Duration};

use super::{EnvReader, security::insecure_opt_in};

/// How change feeds travel between contexts.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Transport {
    /// Each producer serves its feed as a Watch stream (the default).
    #[default]
    Watch,
    /// Producers relay their outboxes to NATS JetStream; consumers read it.
    JetStream(NatsSettings),
}

/// Where NATS is and how a service is known to it.
#[derive(Clone, PartialEq)]
pub struct NatsSettings {
    /// Server URLs (`AGORA_NATS_URL`, comma-separated): `tls://host:port`;
    /// `nats://` only with `AGORA_INSECURE=1`.
    pub urls: Vec<String>,
    /// CA certificates that sign the servers' certificates
    /// (`AGORA_NATS_CA_FILE`); the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for servers that verify clients
    /// (`AGORA_NATS_CERT_FILE`, `AGORA_NATS_KEY_FILE`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A NATS credentials file (a user JWT and its nkey seed,
    /// `AGORA_NATS_CREDS_FILE`).
    pub creds_file: Option<PathBuf>,
    /// Partitions of a stream this service creates (`AGORA_EVENTS_PARTITIONS`).
    pub partitions: u32,
    /// Copies JetStream keeps of a stream this service creates
    /// (`AGORA_EVENTS_REPLICAS`: 1, or 3 on a NATS cluster).
    pub replicas: usize,
    /// How long a started service waits for NATS to answer
    /// (`AGORA_NATS_CONNECT_TIMEOUT_MS`).
    pub connect_timeout: Duration,
}

/// Only where the files are: their contents are secrets and stay out of
/// logs.
impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("urls", &self.urls)
            .field("ca_file", &self.ca_file)
            .field("creds_file", &self.creds_file)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// From `AGORA_EVENTS` (`watch`, the default, or `jetstream`) and, for
    /// JetStream, `AGORA_NATS_*` and `AGORA_EVENTS_*`.
    pub fn read<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Self {
        match env.optional("AGORA_EVENTS").as_deref() {
            None | Some("watch") => Self::Watch,
            Some("jetstream") => Self::JetStream(NatsSettings::read(env)),
            Some(other) => {
                env.problem(format!(
                    "AGORA_EVENTS={other:?}: expected watch (feeds served by their producers) or jetstream"
                ));
                Self::Watch
            }
        }
    }
}

impl NatsSettings {
    fn read<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Self {
        let path = |env: &mut EnvReader<F>, name: &str| env.optional(name).map(PathBuf::from);
        let insecure = insecure_opt_in(env);
        let raw = env.optional("AGORA_NATS_URL").unwrap_or_default();
        let urls: Vec<String> =
            raw.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() {
            env.problem(
                "AGORA_NATS_URL: required with AGORA_EVENTS=jetstream, such as tls://nats:4222".into(),
            );
        }
        for url in &urls {
            let Some((scheme, rest)) = url.split_once("://") else {
                env.problem(format!("AGORA_NATS_URL: {url:?} is not a URL; expected tls://host:port"));
                continue;
            };
            if rest.contains('@') {
                // A password in a URL ends up in logs and process lists;
                // the URL is not repeated here for the same reason.
                env.problem(format!(
                    "AGORA_NATS_URL: a {scheme}:// URL carries credentials; put them in AGORA_NATS_CREDS_FILE"
                ));
                continue;
            }
            match scheme {
                "tls" => {}
                "nats" if insecure => {}
                "nats" => env.problem(format!(
                    "AGORA_NATS_URL: {url:?} is plaintext; use tls://, or set AGORA_INSECURE=1 to allow it"
                )),
                _ => env.problem(format!("AGORA_NATS_URL: {url:?}: expected a tls:// (or nats://) URL")),
            }
        }
        let client_cert = match (path(env, "AGORA_NATS_CERT_FILE"), path(env, "AGORA_NATS_KEY_FILE")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                env.problem("AGORA_NATS_CERT_FILE and AGORA_NATS_KEY_FILE: set both or neither".into());
                None
            }
        };
        Self {
            urls,
            ca_file: path(env, "AGORA_NATS_CA_FILE"),
            client_cert,
            creds_file: path(env, "AGORA_NATS_CREDS_FILE"),
            partitions: env.number("AGORA_EVENTS_PARTITIONS", 8, 1..=256),
            replicas: env.number("AGORA_EVENTS_REPLICAS", 1, 1..=5),
            connect_timeout: env.millis("AGORA_NATS_CONNECT_TIMEOUT_MS", 5_000, 100..=120_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Transport, super::super::ConfigError> {
        let vars: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut env = EnvReader::new(move |name| vars.get(name).cloned());
        let transport = Transport::read(&mut env);
        env.finish().map(|()| transport)
    }

    #[test]
    fn jetstream_settings_are_checked_at_start() {
        assert_eq!(read(&[]).unwrap(), Transport::Watch);
        let Transport::JetStream(nats) =
            read(&[("AGORA_EVENTS", "jetstream"), ("AGORA_NATS_URL", "tls://nats:4222")]).unwrap()
        else {
            panic!("not JetStream")
        };
        assert_eq!((nats.urls.as_slice(), nats.partitions), (&["tls://nats:4222".to_owned()][..], 8));
        let problems = |vars: &[(&str, &str)]| read(vars).unwrap_err().to_string();
        assert!(problems(&[("AGORA_EVENTS", "kafka")]).contains("AGORA_EVENTS=\"kafka\""));
        assert!(problems(&[("AGORA_EVENTS", "jetstream")]).contains("AGORA_NATS_URL: required"));
        assert!(
            problems(&[("AGORA_EVENTS", "jetstream"), ("AGORA_NATS_URL", "nats://n:4222")])
                .contains("plaintext")
        );
        read(&[("AGORA_EVENTS", "jetstream"), ("AGORA_NATS_URL", "nats://n:4222"), ("AGORA_INSECURE", "1")])
            .unwrap();
        let secret = problems(&[("AGORA_EVENTS", "jetstream"), ("AGORA_NATS_URL", "tls://u:hunter2@n:4222")]);
        assert!(secret.contains("AGORA_NATS_CREDS_FILE") && !secret.contains("hunter2"), "{secret}");
        assert!(
            problems(&[
                ("AGORA_EVENTS", "jetstream"),
                ("AGORA_NATS_URL", "tls://n:4222"),
                ("AGORA_EVENTS_PARTITIONS", "0")
            ])
            .contains("AGORA_EVENTS_PARTITIONS")
        );
    }
}
