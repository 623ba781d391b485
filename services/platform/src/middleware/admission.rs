//! Admission control: refuse calls fast instead of queueing them.
//!
//! Application calls need a permit from a server-wide semaphore; when none is
//! free the call fails at once with RESOURCE_EXHAUSTED (load shedding, no
//! unbounded queue), and before start-up finished it fails with UNAVAILABLE.
//! Health and reflection bypass both: a Kubernetes probe must get an answer
//! from a busy server, or the kubelet would restart a pod for being popular.
//! tower's `LoadShed` over `GlobalConcurrencyLimit` sheds every path alike,
//! which is why this small layer exists.

use std::{pin::Pin, sync::Arc};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::{Refused, status_response};
use crate::{health::Health, middleware::delegate_to_inner};

/// The answer to a call turned away, marked so the observe layer knows.
fn refused<B: Default>(status: tonic::Status) -> Response<B> {
    let mut response = status_response(status);
    response.extensions_mut().insert(Refused);
    response
}

/// The wait a shed call is told before it retries (RetryInfo), jittered by
/// the client's own backoff.
const SHED_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Paths that are always admitted.
fn bypasses(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    health: Health,
}

impl AdmissionLayer {
    pub fn new(limit: usize, health: Health) -> Self {
        // At zero from the start: an alert on its rate sees 0, not no data.
        metrics::counter!("agora_grpc_server_shed_total").increment(0);
        Self { permits: Arc::new(Semaphore::new(limit)), health }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, permits: self.permits.clone(), health: self.health.clone() }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    health: Health,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Admission<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    delegate_to_inner!(passthrough);

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if bypasses(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        if !self.health.is_started() {
            let status = tonic::Status::unavailable("the service is starting");
            return Box::pin(std::future::ready(Ok(refused(status))));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("agora_grpc_server_shed_total").increment(1);
            // RetryInfo tells a shed call from an oversized request (also
            // RESOURCE_EXHAUSTED, never worth sending again): only this one
            // says when to retry.
            let details = tonic_types::ErrorDetails::with_retry_info(Some(SHED_RETRY_DELAY));
            let status = <tonic::Status as tonic_types::StatusExt>::with_error_details(
                tonic::Code::ResourceExhausted,
                "the server is at its concurrency limit; retry later",
                details,
            );
            return Box::pin(std::future::ready(Ok(refused(status))));
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            drop(permit);
            result
        })
    }
}
