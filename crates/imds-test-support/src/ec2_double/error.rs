//! EC2's error answers (code, message, HTTP status; see `docs/ec2-semantics.md`, "Errors the
//! double returns"). [`super::xml::error_xml`] writes them.

use axum::http::StatusCode;

use super::ACCOUNT_ID;

/// What one request is answered with: the XML body of a 200, or an error.
pub(super) type Answer = Result<String, ApiError>;

/// An EC2 error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: String,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub(super) fn bad(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 `InvalidParameterValue`.
    pub(super) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::bad("InvalidParameterValue", message)
    }

    pub(super) fn missing(name: &str) -> ApiError {
        ApiError::bad(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    pub(super) fn dry_run() -> ApiError {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    /// `UnauthorizedOperation`, worded like IAM's answer (without the encoded message).
    pub(super) fn unauthorized(action: &str, resource: Option<&str>) -> ApiError {
        let message = match resource {
            Some(resource) => format!(
                "You are not authorized to perform this operation. User: \
                 arn:aws:iam::{ACCOUNT_ID}:user/imds-operator-test is not authorized to perform: \
                 ec2:{action} on resource: {resource} because no identity-based policy allows \
                 the ec2:{action} action"
            ),
            None => "You are not authorized to perform this operation.".to_string(),
        };
        ApiError::new(StatusCode::FORBIDDEN, "UnauthorizedOperation", message)
    }

    pub(super) fn not_found(ids: &[&str]) -> ApiError {
        let message = match ids {
            [id] => format!("The instance ID '{id}' does not exist"),
            _ => format!("The instance IDs '{}' do not exist", ids.join(", ")),
        };
        ApiError::bad("InvalidInstanceID.NotFound", message)
    }

    pub(super) fn malformed(id: &str) -> ApiError {
        ApiError::bad("InvalidInstanceID.Malformed", format!("Invalid id: \"{id}\""))
    }
}
