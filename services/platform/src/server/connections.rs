//! The gRPC server's connections: accepted, handshaken, served over HTTP/2
//! (or HTTP/1.1, for gRPC-Web) and closed on the server's terms.
//!
//! Written here, on hyper's connections, because tonic's `Server`
//! has no hook per connection: no cap on their number, no timeout for a
//! client that connects and never calls, no idle timeout, no maximum age
//! (GOAWAY, so that clients re-balance across replicas) and no way to close
//! a connection whose reader stalled. Each connection is one task:
//!
//! - at `max_connections` (or `max_connections_per_peer` from its peer's
//!   address) it takes the place of the oldest connection that has not
//!   completed a call yet (of that address), which is closed; when every
//!   connection has, it is closed at accept ([`Admission`]): connections
//!   that never call cannot lock out a client that does;
//! - the TLS handshake has `handshake_timeout`, and so has the first call;
//! - with no call or stream open for `idle_timeout`, it gets GOAWAY (and
//!   is cut if still nothing is open `handshake_timeout` later);
//! - at `max_age` (±10%) it gets GOAWAY, and `age_grace` later it is cut;
//! - a stream whose reader took nothing for `stream_stall_timeout` gets
//!   its connection closed the same way (HTTP/2 flow control already keeps
//!   what such a stream holds to the send buffer);
//! - at shutdown it gets GOAWAY, and its calls end within the shutdown bound.
//!
//! The protocol is the client's: hyper-util's automatic builder reads the
//! HTTP/2 preface, or serves HTTP/1.1 (what TLS clients ask for by ALPN
//! when they cannot do HTTP/2), with every limit above. HTTP/1.1 carries
//! one call at a time and only gRPC-Web: a native gRPC call over it gets
//! 400 from tonic-web, as gRPC needs HTTP/2's trailers. Its calls are
//! marked ([`OverHttp1`]) so that their requests are read whole before
//! anything answers them (`middleware::ReadWholeLayer`). On HTTP/1.1,
//! "GOAWAY" is the end of keep-alive: the call in flight ends, then the
//! connection closes.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::{Pin, pin},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, transport::server::Connected};
use tower::Service;

use crate::{
    config::ConnectionSettings,
    connection::{Connection, now_ms},
    middleware::OverHttp1,
    security::tls::ServerTls,
};

/// Bytes HTTP/2 buffers for one stream beyond what its reader's window
/// lets through: what a stalled reader costs the server (hyper's default,
/// 400 KiB, let 300 stalled streams take 280 MiB).
const SEND_BUFFER_BYTES: usize = 32 << 10;

/// How much larger than `max_header_bytes` a header list HTTP/2 itself
/// accepts: between the two, the call gets a gRPC status that names the
/// limit; past this, HTTP/2 answers 431, which clients report as UNKNOWN.
const HEADER_HEADROOM: usize = 8;

/// The least read buffer hyper's HTTP/1.1 accepts (it asserts this): the
/// longest request head HTTP/1.1 reads is the larger of this and the
/// HTTP/2 header list bound.
const HTTP1_MIN_BUFFER: usize = 8192;

/// Why the server closed a connection, as `agora_grpc_server_connections_closed_total`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// At the cap, with no connection to take the place of: closed at accept.
    Limit,
    /// The same, at one peer address's cap.
    PeerLimit,
    /// Its place taken by a new connection before it completed a call.
    Evicted,
    Handshake,
    Idle,
    Age,
    Stalled,
    Shutdown,
}

impl Closed {
    const ALL: [Closed; 8] = [
        Closed::Limit,
        Closed::PeerLimit,
        Closed::Evicted,
        Closed::Handshake,
        Closed::Idle,
        Closed::Age,
        Closed::Stalled,
        Closed::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Closed::Limit => "limit",
            Closed::PeerLimit => "peer_limit",
            Closed::Evicted => "evicted",
            Closed::Handshake => "handshake",
            Closed::Idle => "idle",
            Closed::Age => "age",
            Closed::Stalled => "stalled",
            Closed::Shutdown => "shutdown",
        }
    }

    fn count(self) {
        metrics::counter!("agora_grpc_server_connections_closed_total", "reason" => self.as_str())
            .increment(1);
    }
}

/// The service of one connection: each request gets the connection's
/// information (address, TLS peer certificates) and its [`Connection`],
/// and is counted open until its answer's headers.
#[derive(Clone)]
struct PerConnection<S, I> {
    inner: S,
    info: I,
    connection: Arc<Connection>,
    /// Its place among the connections: given up once a call completed
    /// here, it can no longer be taken by a new connection.
    place: Arc<Place>,
}

impl<S, I> Service<Request<Incoming>> for PerConnection<S, I>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    I: Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < http::Version::HTTP_2;
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(self.info.clone());
        req.extensions_mut().insert(self.connection.clone());
        if http1 {
            req.extensions_mut().insert(OverHttp1);
        }
        let open = Open::begin(self.connection.clone());
        let place = self.place.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await;
            place.proven();
            drop(open);
            response
        })
    }
}

/// A call counted open on its connection until dropped: when its answer's
/// headers are ready, or when the client gave up first.
struct Open(Arc<Connection>);

impl Open {
    fn begin(connection: Arc<Connection>) -> Self {
        connection.begin();
        Self(connection)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Serves `service` on the connections of `listener` (TLS when `tls` is
/// set) until `stop` resolves; then every connection gets GOAWAY and this
/// returns once they all closed. Dropping the future cuts them.
pub(super) async fn serve<S>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    service: S,
    limits: &ConnectionSettings,
    stop: impl Future<Output = ()>,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    for reason in Closed::ALL {
        metrics::counter!("agora_grpc_server_connections_closed_total", "reason" => reason.as_str())
            .increment(0);
    }
    metrics::gauge!("agora_grpc_server_connections").set(0.0);
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size((limits.max_header_bytes * HEADER_HEADROOM) as u32)
        .max_send_buf_size(SEND_BUFFER_BYTES);
    http.http1()
        .timer(TokioTimer::new())
        // Not hyper's own timer for a request head: a connection with no
        // call open is closed by the handshake or idle timeout below, and
        // counted as such.
        .header_read_timeout(None)
        .max_buf_size((limits.max_header_bytes * HEADER_HEADROOM).max(HTTP1_MIN_BUFFER));
    let shared = Arc::new(Shared { http, limits: limits.clone(), tls, closing: CancellationToken::new() });
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_peer);
    let mut connections = JoinSet::new();
    let mut stop = pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
            // Reap the tasks of closed connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let place = match admission.admit(peer.ip()) {
            Ok(place) => place,
            Err(refused) => {
                refused.count();
                tracing::debug!(%peer, reason = refused.as_str(), "connection refused at its limit");
                continue;
            }
        };
        let (shared, service) = (shared.clone(), service.clone());
        connections.spawn(async move {
            let open = metrics::gauge!("agora_grpc_server_connections");
            open.increment(1.0);
            let evicted = place.evicted.clone();
            tokio::select! {
                () = shared.handshake(tcp, peer, service, place) => {}
                // Its place was taken before it completed a call: cut.
                () = evicted.cancelled() => {
                    Closed::Evicted.count();
                    tracing::debug!(%peer, "connection closed: a new connection took its place");
                }
            }
            open.decrement(1.0);
        });
    }
    drop(listener);
    shared.closing.cancel();
    while connections.join_next().await.is_some() {}
}

/// What every connection task shares.
struct Shared {
    http: auto::Builder<TokioExecutor>,
    limits: ConnectionSettings,
    tls: Option<ServerTls>,
    /// Cancelled once the server stops: every connection gets GOAWAY.
    closing: CancellationToken,
}

impl Shared {
    /// TLS (bounded by the handshake timeout) when configured, then serve.
    async fn handshake<S>(&self, tcp: TcpStream, peer: SocketAddr, service: S, place: Arc<Place>)
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        // Without TCP_NODELAY the end of an answer waits for the client's
        // delayed ACK.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.run(tcp, service, place).await;
        };
        let acceptor = TlsAcceptor::from(tls.config());
        let failure = match tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => return self.run(stream, service, place).await,
            Ok(Err(err)) => err.to_string(),
            Err(_) => {
                Closed::Handshake.count();
                "timed out".to_owned()
            }
        };
        // A port scanner or a plaintext client is no server failure.
        metrics::counter!("agora_tls_handshake_failures_total").increment(1);
        tracing::debug!(%peer, error = %failure, "TLS handshake failed");
    }

    /// Serves one connection until it ends, or the server ends it.
    async fn run<IO, S>(&self, io: IO, service: S, place: Arc<Place>)
    where
        IO: AsyncRead + AsyncWrite + Connected + Send + Unpin + 'static,
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let connection = Arc::new(Connection {
            last_active: AtomicU64::new(now_ms()),
            closing: self.closing.clone(),
            ..Default::default()
        });
        let service =
            PerConnection { inner: service, info: io.connect_info(), connection: connection.clone(), place };
        let mut conn = pin!(self.http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
        let limits = &self.limits;
        // ±10%, so that connections opened together do not all close together.
        let age = limits.max_age.mul_f64(0.9 + fastrand::f64() * 0.2);
        let aged = tokio::time::sleep(age);
        let mut aged = pin!(aged);
        let reason = loop {
            let wake = self.next_check(&connection);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = self.closing.cancelled() => break Closed::Shutdown,
                () = &mut aged => break Closed::Age,
                () = connection.changed.notified() => {}
                () = tokio::time::sleep(wake) => {
                    if let Some(reason) = self.closes(&connection) {
                        break reason;
                    }
                }
            }
        };
        reason.count();
        tracing::debug!(reason = reason.as_str(), "closing a connection with GOAWAY");
        conn.as_mut().graceful_shutdown();
        // At shutdown the server's own bound cuts what is left; otherwise
        // the calls get the grace, then the connection is cut.
        if reason == Closed::Shutdown {
            let _ = conn.await;
            return;
        }
        let grace = async {
            if matches!(reason, Closed::Handshake | Closed::Idle) {
                // Nothing was open. What may be left is a call that crossed
                // the GOAWAY, or half a request head, which HTTP/1.1 waits
                // for: without a call open by the handshake timeout, cut.
                tokio::time::sleep(limits.handshake_timeout).await;
                if connection.open.load(Ordering::Relaxed) == 0 {
                    return;
                }
            }
            tokio::time::sleep(limits.age_grace).await;
        };
        tokio::select! {
            _ = conn => {}
            () = grace => {}
        }
    }

    /// Why `connection` should close now, if it should.
    fn closes(&self, connection: &Connection) -> Option<Closed> {
        let limits = &self.limits;
        let now = now_ms();
        if connection.open.load(Ordering::Relaxed) == 0 {
            let called = connection.called.load(Ordering::Relaxed);
            let timeout = if called { limits.idle_timeout } else { limits.handshake_timeout };
            let idle_for = now.saturating_sub(connection.last_active.load(Ordering::Relaxed));
            if idle_for >= timeout.as_millis() as u64 {
                return Some(if called { Closed::Idle } else { Closed::Handshake });
            }
        }
        let stalled_for = connection.stalled_since().map(|since| now.saturating_sub(since));
        if stalled_for.is_some_and(|ms| ms >= limits.stream_stall_timeout.as_millis() as u64) {
            return Some(Closed::Stalled);
        }
        None
    }

    /// How long until `connection` may next have to close: its idle or
    /// handshake deadline when nothing is open, a quarter of the stall
    /// timeout while streams are, and the idle timeout otherwise (its calls
    /// end first). A connection closes between one and two idle timeouts
    /// after its last call.
    fn next_check(&self, connection: &Connection) -> Duration {
        let limits = &self.limits;
        if connection.streams.load(Ordering::Relaxed) > 0 {
            return limits.stream_stall_timeout / 4;
        }
        if connection.open.load(Ordering::Relaxed) > 0 {
            return limits.idle_timeout;
        }
        let since =
            Duration::from_millis(now_ms().saturating_sub(connection.last_active.load(Ordering::Relaxed)));
        let left = if connection.called.load(Ordering::Relaxed) {
            limits.idle_timeout.saturating_sub(since)
        } else {
            // A first call may come before the handshake timeout: look
            // again by then at the latest.
            limits.handshake_timeout.saturating_sub(since).min(limits.idle_timeout)
        };
        left.max(Duration::from_millis(1))
    }
}

/// Who holds the connections' places: at most `max` in all and
/// `per_peer` from one address. Written here because no crate admits
/// connections this way. At the cap, a new connection takes the place of
/// a connection that has not completed a call yet: the oldest of the
/// address holding the most such connections. So connections that never
/// call (silent TCP, a TLS handshake or an HTTP/2 preface and nothing
/// more) cannot lock out a client that calls, however long the handshake
/// timeout and however often they reconnect. An address takes places only
/// from an address holding more of them than it does: attackers that
/// reconnect as fast as they can displace each other only until they hold
/// equal shares, and are then refused at accept, which costs the server
/// an accept instead of a TLS handshake (a flood of 5,000 from 20
/// addresses churned about 700 connections a second, and took a fifth of
/// the server's core, when any newcomer took the oldest place). When
/// every place is held by a connection that completed a call, or at its
/// address's own cap, the new connection is refused.
struct Admission {
    max: usize,
    per_peer: usize,
    state: Mutex<Places>,
}

#[derive(Default)]
struct Places {
    /// Places held.
    held: usize,
    by_peer: HashMap<IpAddr, usize>,
    /// The places whose connection has not completed a call, by age
    /// (their numbers only grow): the peer, and how to cut the connection.
    unproven: BTreeMap<u64, (IpAddr, CancellationToken)>,
    /// How many of those each address holds.
    unproven_by_peer: HashMap<IpAddr, usize>,
    next: u64,
}

/// One connection's place. Given back when dropped, unless it was taken.
#[derive(Debug)]
struct Place {
    number: u64,
    peer: IpAddr,
    admission: Weak<Admission>,
    /// Cancelled when a new connection takes the place: the connection
    /// is cut.
    evicted: CancellationToken,
    /// Set once a call completed: the place can no longer be taken.
    proven: AtomicBool,
}

/// Why a connection was refused a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Cap,
    PeerCap,
}

impl Refused {
    fn closed(self) -> Closed {
        match self {
            Refused::Cap => Closed::Limit,
            Refused::PeerCap => Closed::PeerLimit,
        }
    }

    fn count(self) {
        self.closed().count();
    }

    fn as_str(self) -> &'static str {
        self.closed().as_str()
    }
}

impl Admission {
    fn new(max: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Self { max, per_peer, state: Mutex::default() })
    }

    /// A place for a new connection from `peer`, taken from the oldest
    /// connection without a completed call if the caps are reached.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Arc<Place>, Refused> {
        let mut places = self.state.lock().expect("never poisoned");
        if places.by_peer.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            return Err(Refused::PeerCap);
        }
        if places.held >= self.max {
            let mine = places.unproven_by_peer.get(&peer).copied().unwrap_or(0);
            let most = places.unproven_by_peer.values().copied().max().unwrap_or(0);
            if most <= mine {
                return Err(Refused::Cap);
            }
            // The oldest place of the addresses holding the most.
            let counts = &places.unproven_by_peer;
            let oldest =
                places.unproven.iter().find(|(_, (p, _))| counts.get(p) == Some(&most)).map(|(n, _)| *n);
            places.take(oldest.expect("an address counted with unproven places holds one"));
        }
        let number = places.next;
        places.next += 1;
        let place = Arc::new(Place {
            number,
            peer,
            admission: Arc::downgrade(self),
            evicted: CancellationToken::new(),
            proven: AtomicBool::new(false),
        });
        places.held += 1;
        *places.by_peer.entry(peer).or_default() += 1;
        places.unproven.insert(number, (peer, place.evicted.clone()));
        *places.unproven_by_peer.entry(peer).or_default() += 1;
        Ok(place)
    }
}

impl Places {
    /// Takes the place `number` from its connection, which is cut.
    fn take(&mut self, number: u64) {
        if let Some((peer, evicted)) = self.unproven.remove(&number) {
            self.proven(peer);
            self.release(peer);
            evicted.cancel();
        }
    }

    /// One unproven place of `peer` fewer (it completed a call, or went).
    fn proven(&mut self, peer: IpAddr) {
        if let Some(n) = self.unproven_by_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.unproven_by_peer.remove(&peer);
            }
        }
    }

    fn release(&mut self, peer: IpAddr) {
        self.held -= 1;
        if let Some(n) = self.by_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.by_peer.remove(&peer);
            }
        }
    }
}

impl Place {
    /// A call completed on its connection: the place is its for good.
    fn proven(&self) {
        if self.proven.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(admission) = self.admission.upgrade() {
            let mut places = admission.state.lock().expect("never poisoned");
            if places.unproven.remove(&self.number).is_some() {
                places.proven(self.peer);
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // A place that was taken was given back by whoever took it.
        if self.evicted.is_cancelled() {
            return;
        }
        if let Some(admission) = self.admission.upgrade() {
            let mut places = admission.state.lock().expect("never poisoned");
            if places.unproven.remove(&self.number).is_some() {
                places.proven(self.peer);
            }
            places.release(self.peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn at_the_cap_a_new_connection_takes_the_place_of_the_oldest_that_never_called() {
        let admission = Admission::new(3, 3);
        let first = admission.admit(ip(1)).unwrap();
        let second = admission.admit(ip(1)).unwrap();
        let caller = admission.admit(ip(2)).unwrap();
        caller.proven();
        let newcomer = admission.admit(ip(3)).unwrap();
        assert!(first.evicted.is_cancelled(), "the oldest that never called went");
        assert!(!second.evicted.is_cancelled() && !caller.evicted.is_cancelled());
        second.proven();
        newcomer.proven();
        assert_eq!(admission.admit(ip(4)).err(), Some(Refused::Cap), "every place is proven");
        drop(second);
        let fourth = admission.admit(ip(4)).expect("a place given back is free");
        drop(first);
        let held = admission.state.lock().unwrap().held;
        assert_eq!(held, 3, "a taken place is not given back twice");
        drop((caller, newcomer, fourth));
        let places = admission.state.lock().unwrap();
        assert_eq!((places.held, places.unproven_by_peer.len()), (0, 0), "every place is given back");
    }

    #[test]
    fn places_are_taken_from_the_address_holding_most_and_never_by_it() {
        let admission = Admission::new(4, 10);
        let flood: Vec<_> = (0..3).map(|_| admission.admit(ip(9)).unwrap()).collect();
        let other = admission.admit(ip(8)).unwrap();
        // The flood's own newcomer is refused: it would only displace itself.
        assert_eq!(admission.admit(ip(9)).err(), Some(Refused::Cap));
        // As is one from an address holding as many as the most.
        let client = admission.admit(ip(1)).expect("an address holding none gets a place");
        assert!(flood[0].evicted.is_cancelled(), "taken from the address holding most, its oldest");
        assert!(!other.evicted.is_cancelled() && !flood[1].evicted.is_cancelled());
        let _again = admission.admit(ip(8)).expect("9 holds two, 8 one");
        assert!(flood[1].evicted.is_cancelled());
        assert_eq!(admission.admit(ip(8)).err(), Some(Refused::Cap), "8 holds the most now");
        drop(client);
    }

    #[test]
    fn one_peer_takes_at_most_its_share() {
        let admission = Admission::new(10, 2);
        let a = admission.admit(ip(9)).unwrap();
        let b = admission.admit(ip(9)).unwrap();
        assert_eq!(admission.admit(ip(9)).err(), Some(Refused::PeerCap));
        assert!(!a.evicted.is_cancelled() && !b.evicted.is_cancelled(), "nothing taken for it");
        let other = admission.admit(ip(1)).unwrap();
        assert!(!other.evicted.is_cancelled(), "others are not touched");
    }
}
