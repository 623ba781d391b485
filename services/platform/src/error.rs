//! The errors a service answers with, and the one place that turns them into
//! gRPC statuses.
//!
//! Domain code returns [`Error`]; it knows nothing of tonic. `From<Error> for
//! tonic::Status` decides codes and details: field violations travel as
//! `google.rpc.BadRequest`, a stale etag as `google.rpc.PreconditionFailure`,
//! and an internal error is logged with its whole chain but answered with no
//! detail at all.
//!
//! Errors are logged once, here, where they are answered: making an error
//! (from a database failure, say) logs nothing.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `product.price.currency_code`.
    pub field: String,
    /// What is wrong with it, for a person to read.
    pub description: String,
}

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; retrying it unchanged will fail again.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named resource does not exist.
    #[error("{resource} {id:?} not found")]
    NotFound { resource: &'static str, id: String },
    /// The caller may not do this (to this resource, or at all). Also the
    /// answer when a customer names a resource that does not exist, so
    /// that ids cannot be probed.
    #[error("{0}")]
    PermissionDenied(String),
    /// Creating it would break a uniqueness rule.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in the state the call needs (a stale etag, a
    /// discontinued product).
    #[error("{description}")]
    FailedPrecondition { kind: Precondition, subject: String, description: String },
    /// The request asks for a range the service no longer has (a change
    /// feed cursor older than the retention).
    #[error("{0}")]
    OutOfRange(String),
    /// A dependency (the database, an upstream service) cannot answer now;
    /// the call may succeed if retried later. `cause` is logged, never sent.
    #[error("{message}{}", .cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Unavailable { message: String, cause: Option<String> },
    /// A bug or an unexpected failure. Logged, never shown to the caller.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Which precondition failed: the `type` of a `google.rpc.PreconditionFailure`
/// violation, so a client can tell the cases apart without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The caller's etag is not the resource's current one.
    Etag,
    /// The resource's state forbids the change (a discontinued product).
    State,
    /// A product the call refers to is not in the state it needs.
    ProductState,
    /// A quantity would pass its bound.
    Quantity,
}

impl Precondition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Etag => "ETAG",
            Self::State => "STATE",
            Self::ProductState => "PRODUCT_STATE",
            Self::Quantity => "QUANTITY",
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

/// Most field violations one answer carries; the rest are counted in one
/// last violation. With [`MAX_DETAIL_CHARS`] this keeps every error a few
/// KB, whatever the request held (an update_mask of 100,000 paths).
pub const MAX_VIOLATIONS: usize = 10;

/// Longest field path or description in an answer, in characters; longer
/// ones (quoting the caller's input) are cut and end with `…`.
pub const MAX_DETAIL_CHARS: usize = 160;

/// `text` cut to [`MAX_DETAIL_CHARS`] characters.
fn bounded(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_DETAIL_CHARS - 1) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// At most [`MAX_VIOLATIONS`] violations, each bounded; when there were
/// more, the last one says how many were left out.
fn bounded_violations(violations: Vec<FieldViolation>) -> Vec<FieldViolation> {
    let total = violations.len();
    let mut kept: Vec<FieldViolation> = violations
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|v| FieldViolation { field: bounded(v.field), description: bounded(v.description) })
        .collect();
    if total > MAX_VIOLATIONS {
        kept.truncate(MAX_VIOLATIONS - 1);
        let left_out = total - kept.len();
        kept.push(FieldViolation {
            field: String::new(),
            description: format!("and {left_out} more violations, not listed"),
        });
    }
    kept
}

impl Error {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation { field: field.into(), description: description.into() }])
    }

    /// A dependency cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), cause: None }
    }

    /// A dependency cannot answer now, for a reason worth logging (never
    /// sent to the caller).
    pub fn unavailable_because(message: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        Self::Unavailable { message: message.into(), cause: Some(cause.to_string()) }
    }

    /// The request's etag is not the resource's current one.
    pub fn stale_etag(resource: &'static str, id: &str) -> Self {
        Self::FailedPrecondition {
            kind: Precondition::Etag,
            subject: format!("{resource}/{id}"),
            description: format!("the {resource} changed since it was read (stale etag); read it again"),
        }
    }
}

/// Collects every invalid field of a request, so the caller learns of all
/// of them in one answer.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// Records the error of a parse, when there is one, and keeps the value.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was wrong.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(self.0)) }
    }
}

/// An error with its causes, as one line: a connection's failure is in its
/// sources (`transport error: ... invalid peer certificate: Expired`).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let violations = bounded_violations(violations);
                let message = format!("invalid request: {}", describe(&violations));
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound { resource, id } => {
                let err = Error::NotFound { resource, id: bounded(id) };
                let Error::NotFound { resource, ref id } = err else { unreachable!() };
                let details = ErrorDetails::with_resource_info(resource, id.clone(), "", err.to_string());
                Status::with_error_details(Code::NotFound, err.to_string(), details)
            }
            Error::PermissionDenied(message) => {
                metrics::counter!("agora_auth_rejections_total", "reason" => "forbidden").increment(1);
                Status::permission_denied(message)
            }
            Error::AlreadyExists(message) => Status::already_exists(bounded(message)),
            Error::FailedPrecondition { kind, subject, description } => {
                let (subject, description) = (bounded(subject), bounded(description));
                let details = ErrorDetails::with_precondition_failure_violation(
                    kind.as_str(),
                    subject,
                    description.clone(),
                );
                Status::with_error_details(Code::FailedPrecondition, description, details)
            }
            Error::OutOfRange(message) => Status::out_of_range(message),
            Error::Unavailable { message, cause } => {
                if let Some(cause) = &cause {
                    tracing::warn!(error = %cause, "{message}");
                }
                Status::unavailable(message)
            }
            Error::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violations_travel_as_bad_request() {
        let mut v = Violations::new();
        v.add("product.display_name", "must not be empty");
        v.add("product.price", "is required");
        let status: Status = v.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> =
            details.bad_request().unwrap().field_violations.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["product.display_name", "product.price"]);
    }

    /// However much the request held, the answer stays a few KB: the
    /// violations are capped in count and each is cut.
    #[test]
    fn field_violations_are_bounded() {
        let mut v = Violations::new();
        for i in 0..100_000 {
            v.add("update_mask", format!("{:?} is not a field of Product", format!("path{i}").repeat(50)));
        }
        let status: Status = v.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() < 4096, "message of {} bytes", status.message().len());
        assert!(status.details().len() < 4096, "details of {} bytes", status.details().len());
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), MAX_VIOLATIONS);
        assert!(violations[0].description.ends_with('…'));
        assert_eq!(violations.last().unwrap().description, "and 99991 more violations, not listed");
    }

    #[test]
    fn internal_errors_keep_their_details_to_themselves() {
        let status: Status = Error::Internal(anyhow::anyhow!("secret table is corrupt")).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
