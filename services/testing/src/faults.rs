//! A TCP proxy that fails on demand, put between a service and its
//! database (or anything else reached over TCP) to make the faults of a
//! network and a server happen for real: connections refused, connections
//! reset, and a black hole that takes packets and answers nothing.
//!
//! The tests use it in-process ([`FaultProxy`]); the chaos run drives the
//! same code as a process of its own (`agora-fault-proxy`, its faults read
//! from standard input).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does to the connections through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass both ways.
    None,
    /// Every open connection is reset, and new ones are refused (nothing
    /// listens on the port): a server that went away.
    Refuse,
    /// Nothing passes, either way, on open connections or new ones (which
    /// are accepted and then left without an answer); what was sent waits,
    /// and passes once the fault ends: a network that drops packets.
    BlackHole,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "none" | "forward" => Ok(Self::None),
            "refuse" => Ok(Self::Refuse),
            "blackhole" => Ok(Self::BlackHole),
            other => Err(format!("{other:?} is not a fault: none, refuse or blackhole")),
        }
    }
}

/// A proxy from a loopback port to `target`, with its fault switch.
pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// A proxy on `listen`.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("binding the fault proxy");
        let addr = listener.local_addr().expect("bound");
        let fault = watch::channel(Fault::None).0;
        let task = tokio::spawn(serve(listener, addr, target, fault.subscribe()));
        Self { addr, fault, task }
    }

    /// From now on, `fault`.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault now.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut fault: watch::Receiver<Fault>,
) {
    loop {
        let now = *fault.borrow_and_update();
        if now == Fault::Refuse {
            // Nothing listens while the fault lasts: connections are refused.
            drop(listener);
            if fault.wait_for(|f| *f != Fault::Refuse).await.is_err() {
                return;
            }
            listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(listener) => break listener,
                    // The port may linger a moment after the close.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            continue;
        }
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(carry(client, target, fault.clone()));
                }
            }
            changed = fault.changed() => if changed.is_err() { return },
        }
    }
}

/// Carries one connection's bytes both ways, as the fault allows.
async fn carry(mut client: TcpStream, target: SocketAddr, mut fault: watch::Receiver<Fault>) {
    let _ = client.set_nodelay(true);
    // A new connection into the black hole waits for the fault to end.
    if fault.wait_for(|f| *f != Fault::BlackHole).await.is_err() {
        return;
    }
    let now = *fault.borrow_and_update();
    if now == Fault::Refuse {
        return reset(client);
    }
    let Ok(mut server) = TcpStream::connect(target).await else { return reset(client) };
    let _ = server.set_nodelay(true);
    let (mut up, mut down) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::Refuse => {
                reset(server);
                return reset(client);
            }
            Fault::BlackHole => {
                if fault.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::None => {}
        }
        tokio::select! {
            read = client.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if server.write_all(&up[..n]).await.is_err() { return },
            },
            read = server.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if client.write_all(&down[..n]).await.is_err() { return },
            },
            changed = fault.changed() => if changed.is_err() { return },
        }
    }
}

/// Closes with a reset (RST), as a server that died mid-conversation.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// A TCP connection to `addr` from the loopback address `source` (any of
/// 127.0.0.0/8 works on Linux): a client at another address.
pub async fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::new(source, 0)).expect("binding the source address");
    socket.connect(addr).await.expect("the server accepts")
}

/// A connection from `source` to the TLS server at `addr` that finishes
/// its TLS handshake (trusting the test CA) and then sends nothing: a
/// client that holds a connection without ever calling.
pub async fn tls_handshake_only(
    source: std::net::IpAddr,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = agora_platform::security::tls::client_config(crate::pki().ca_pem().as_bytes(), None)
        .expect("the test CA");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = connect_from(source, addr).await;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await
}

/// Whether the peer closed `stream` within `bound` (end of stream, or a
/// reset), reading and dropping whatever it sent before.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, bound: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, closed).await.is_ok()
}
