//! Each call to the generated server of its service.
//!
//! Written here rather than taken from tonic's `Routes`, an axum router,
//! because a gRPC path needs no pattern matching: its service is its first
//! segment (`/agora.catalog.v1.CatalogService/GetProduct`). For every call
//! axum matched `/{service}/{*rest}`, kept the captured method in the
//! request's extensions, boxed the request body and the answer's body once
//! more and cloned the boxed route: five allocations a call, and 2 to 4 %
//! of the catalog's GetProduct, for nothing a handler reads.

use std::{convert::Infallible, pin::Pin, sync::Arc};

use http::{Request, Response};
use tonic::{body::Body, server::NamedService};
use tower::{Service, ServiceExt as _};

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// A generated server that answers through a shared reference: each call
/// gets its own clone (tonic's generated servers are an `Arc` inside, so a
/// clone allocates nothing).
trait Route: Send + Sync {
    fn call(&self, req: Request<Body>) -> Answer;
}

/// A server tonic generated from a proto service (health's and
/// reflection's too), as a server adds it.
pub trait GeneratedServer:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GeneratedServer for S where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

struct Shared<S>(S);

impl<S: GeneratedServer> Route for Shared<S> {
    fn call(&self, req: Request<Body>) -> Answer {
        // Generated servers are always ready; oneshot asks anyway, as tower's
        // contract wants.
        Box::pin(self.0.clone().oneshot(req))
    }
}

/// The services of one server, by name; a call to any other service is
/// answered UNIMPLEMENTED, as tonic's router answers it.
#[derive(Clone, Default)]
pub(crate) struct Router {
    routes: Arc<Vec<(&'static str, Box<dyn Route>)>>,
}

impl Router {
    /// Adds `service` under its name. Built once, before the server serves.
    pub(crate) fn add<S: GeneratedServer>(&mut self, service: S) {
        let routes = Arc::get_mut(&mut self.routes).expect("routes are added before the router is shared");
        routes.push((S::NAME, Box::new(Shared(service))));
    }

    fn route(&self, path: &str) -> Option<&dyn Route> {
        let (service, _method) = path.strip_prefix('/')?.split_once('/')?;
        // A handful of services: a scan is faster than hashing the name.
        self.routes.iter().find(|(name, _)| *name == service).map(|(_, route)| route.as_ref())
    }
}

impl Service<Request<Body>> for Router {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Answer {
        match self.route(req.uri().path()) {
            Some(route) => route.call(req),
            None => Box::pin(std::future::ready(Ok(tonic::Status::unimplemented("").into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Named;

    impl NamedService for Named {
        const NAME: &'static str = "agora.test.v1.TestService";
    }

    impl Service<Request<Body>> for Named {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            let mut answer = Response::new(Body::empty());
            answer.headers_mut().insert("x-path", req.uri().path().parse().unwrap());
            std::future::ready(Ok(answer))
        }
    }

    async fn answer(router: &mut Router, path: &str) -> Response<Body> {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        router.call(req).await.unwrap()
    }

    /// A call reaches its service by the path's first segment, whatever its
    /// method; a path of another service, or no service, is UNIMPLEMENTED.
    #[tokio::test]
    async fn calls_reach_their_service_by_name() {
        let mut router = Router::default();
        router.add(Named);
        let reached = answer(&mut router, "/agora.test.v1.TestService/Get").await;
        assert_eq!(reached.headers()["x-path"], "/agora.test.v1.TestService/Get");
        for path in
            ["/agora.test.v1.Other/Get", "/agora.test.v1.TestService", "/", "/agora.test.v1.TestServiceX/Get"]
        {
            let refused = answer(&mut router, path).await;
            assert_eq!(refused.headers()["grpc-status"], "12", "{path}");
            assert!(refused.headers().get("x-path").is_none(), "{path}");
        }
    }
}
