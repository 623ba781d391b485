//! Deadlines: honour the caller's `grpc-timeout`, cap it with the server's
//! own limit, and answer DEADLINE_EXCEEDED when it passes.
//!
//! Written here rather than taken from tonic's `Server::timeout`, which
//! reports an expired deadline as CANCELLED; gRPC says DEADLINE_EXCEEDED.

use std::{pin::Pin, time::Duration};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{delegate_to_inner, status_response};
use crate::deadline::Deadline;

/// Encodes a timeout as a `grpc-timeout` value: microseconds while they fit
/// in 8 digits, then milliseconds, then seconds.
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    let micros = timeout.as_micros();
    if micros < 100_000_000 {
        format!("{micros}u")
    } else if micros / 1000 < 100_000_000 {
        format!("{}m", micros / 1000)
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    /// Used when the caller sets no deadline, and as a cap when it sets a
    /// longer one: no call holds resources forever.
    pub server_limit: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, server_limit: self.server_limit }
    }
}

#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    server_limit: Duration,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DeadlineService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    delegate_to_inner!(passthrough);

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let asked =
            req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let budget = asked.map_or(self.server_limit, |t| t.min(self.server_limit));
        let deadline = Instant::now() + budget;
        req.extensions_mut().insert(Deadline(deadline));
        let fut = self.inner.call(req);
        Box::pin(Deadline(deadline).scope(async move {
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(result) => result,
                Err(_) => Ok(status_response(tonic::Status::deadline_exceeded(
                    "the deadline passed before the server answered",
                ))),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_parse() {
        for t in [Duration::from_micros(1), Duration::from_millis(1500), Duration::from_secs(3600)] {
            assert_eq!(parse_grpc_timeout(&encode_grpc_timeout(t)), Some(t));
        }
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("123456789n"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
