//! A real NATS server with JetStream for a test: Debian's `nats-server`,
//! started on a free loopback port with a store directory of its own, so a
//! test can stop it and start it again with what it stored.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agora_platform::events::{NatsSettings, Transport};

/// A running `nats-server -js`, stopped when dropped.
pub struct NatsServer {
    pub addr: SocketAddr,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits (bounded) until it takes connections.
    /// None, with the reason printed, when `nats-server` is not installed
    /// and `AGORA_TEST_NATS` does not require it (CI sets it).
    pub fn start() -> Option<Self> {
        if Command::new("nats-server").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("AGORA_TEST_NATS").is_none(),
                "AGORA_TEST_NATS is set but nats-server is not installed (Debian: apt-get install nats-server)"
            );
            crate::skipped("nats-server is not installed (Debian: apt-get install nats-server)");
            return None;
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("bound").port()
        };
        let store = std::env::temp_dir().join(crate::unique("agora_nats"));
        let mut server = Self { addr: SocketAddr::from(([127, 0, 0, 1], port)), store, child: None };
        server.start_again();
        Some(server)
    }

    /// Starts the stopped server again, on its port and with its store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the NATS server runs already");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.addr.port().to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {} within 20 s", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once, as a crash would; what it stored stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Change feeds on this server: plaintext on loopback, 8 partitions.
    pub fn transport(&self) -> Transport {
        self.transport_with(8)
    }

    /// Change feeds on this server with `partitions` to a new stream.
    pub fn transport_with(&self, partitions: u32) -> Transport {
        Self::transport_on(self.addr.port(), partitions)
    }

    /// Change feeds on a NATS at `port` on loopback, which may be none.
    pub fn transport_at(port: u16) -> Transport {
        Self::transport_on(port, 8)
    }

    fn transport_on(port: u16, partitions: u32) -> Transport {
        Transport::JetStream(NatsSettings {
            urls: vec![format!("nats://127.0.0.1:{port}")],
            ca_file: None,
            client_cert: None,
            creds_file: None,
            partitions,
            replicas: 1,
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// A client of this server, for a test to look at its streams.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(format!("nats://{}", self.addr)).await.expect("connecting to NATS");
        async_nats::jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
