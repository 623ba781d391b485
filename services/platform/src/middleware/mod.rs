//! The server's tower middleware. The stack itself is assembled, one layer a
//! line, in [`crate::server`]; each layer lives in a module of its own here.
//!
//! Every layer answers a refusal as a trailers-only gRPC response rather
//! than an error, so the observe layer above it sees one kind of outcome.

mod admission;
mod deadline;
mod http1;
mod observe;
mod trailers;

/// The items of `tower::Service` that the middleware here write alike: the
/// inner service's error, and ready when the inner service is; with
/// `passthrough`, the inner service's response too.
macro_rules! delegate_to_inner {
    () => {
        type Error = S::Error;

        fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }
    };
    (passthrough) => {
        type Response = S::Response;
        $crate::middleware::delegate_to_inner!();
    };
}
pub(crate) use delegate_to_inner;

pub use admission::{AdmissionLayer, Waiting};
pub use deadline::{DeadlineLayer, encode_grpc_timeout, parse_grpc_timeout};
pub use http1::{OverHttp1, ReadWholeLayer, http1_request_bytes};
pub use observe::{CallNotes, ObserveLayer};
pub use trailers::{ExtraTrailers, with_extra_trailers};

use http::Response;
use tower_http::catch_panic::ResponseForPanic;

/// A new request id, made without a system call: a random 64-bit process
/// prefix and a counter, as 32 hex digits shaped like a UUID. tower-http's
/// `MakeRequestUuid` asks the kernel for randomness on every call, which
/// showed in the profile of a busy server; ids only need to be unique.
/// The digits are written into a buffer rather than through `format!`,
/// which cost a second allocation and the formatting machinery per call.
pub(crate) fn new_request_id() -> http::HeaderValue {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let value = http::HeaderValue::from_bytes(&uuid_shaped(prefix, n)).expect("hex digits and dashes");
    unindexed(value)
}

/// `prefix` then `n` as 32 lowercase hex digits in UUID groups (8-4-4-4-12):
/// the high 16 bits of `n` in the fourth group, the low 48 in the fifth.
fn uuid_shaped(prefix: u64, n: u64) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let digits = (u128::from(prefix) << 64) | u128::from(n);
    let mut shift = 128;
    for (i, byte) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        shift -= 4;
        *byte = HEX[((digits >> shift) & 0xf) as usize];
    }
    out
}

/// A header value HTTP/2 sends without adding it to its header table
/// (HPACK's "never indexed"): a request id is unique to its call, so
/// indexing it only evicts entries that repeat, on both ends. `h2` offers
/// this only through the value's sensitive flag; a request id is no secret
/// and nothing here treats it as one.
pub(crate) fn unindexed(mut value: http::HeaderValue) -> http::HeaderValue {
    value.set_sensitive(true);
    value
}

/// Marks an answer the server gave on purpose without serving the call (it
/// is still starting, or at its concurrency limit): the observe layer
/// counts it, and logs it at debug, not as a failure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused;

/// A trailers-only gRPC response carrying `status`.
pub(crate) fn status_response<B: Default>(status: tonic::Status) -> Response<B> {
    status.into_http()
}

/// Turns a panic in a handler into INTERNAL; the panic message is logged,
/// never sent.
#[derive(Debug, Clone, Copy)]
pub struct PanicToInternal;

impl ResponseForPanic for PanicToInternal {
    type ResponseBody = tonic::body::Body;

    fn response_for_panic(
        &mut self,
        err: Box<dyn std::any::Any + Send + 'static>,
    ) -> Response<Self::ResponseBody> {
        let message = err
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        tracing::error!(panic = %message, "handler panicked");
        status_response(tonic::Status::internal("internal error"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id's digits: the prefix, then the counter across the last two groups.
    #[test]
    fn request_ids_are_shaped_like_uuids() {
        let id = uuid_shaped(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(&id, b"01234567-89ab-cdef-fedc-ba9876543210");
        assert_eq!(&uuid_shaped(0, 1), b"00000000-0000-0000-0000-000000000001");
    }
    use tower::{Layer as _, ServiceExt as _};
    use tower_http::catch_panic::CatchPanicLayer;

    /// A handler that panics answers INTERNAL, and the panic text stays in the logs.
    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let handler = tower::service_fn(|_req: http::Request<tonic::body::Body>| async move {
            if true {
                panic!("the secret sauce is gone");
            }
            Ok::<_, std::convert::Infallible>(Response::new(tonic::body::Body::empty()))
        });
        let service = CatchPanicLayer::custom(PanicToInternal).layer(handler);
        let response = service.oneshot(http::Request::new(tonic::body::Body::empty())).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "13");
        assert_eq!(response.headers()["grpc-message"], "internal%20error");
    }
}
