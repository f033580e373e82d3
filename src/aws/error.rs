//! One classification of AWS errors for EC2 and CloudWatch: an error code (and the HTTP status)
//! decides what the controller does next. EC2's instance-specific codes (not found, refused
//! options, DryRun) mean something only for EC2.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use imds_core::observation::{Failure, FailureKind};
use imds_core::record::Answer;

/// The service that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// EC2 (DescribeInstances, ModifyInstanceMetadataOptions, CreateTags, DeleteTags).
    Ec2,
    /// CloudWatch (GetMetricData).
    CloudWatch,
}

/// What the controller does with an AWS error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// EC2: the instance does not exist (terminated): skip it.
    NotFound,
    /// The caller lacks the permission (`UnauthorizedOperation`, `AccessDenied`, a CloudWatch
    /// query answered `Forbidden`): report, retry with a long backoff.
    PermissionDenied,
    /// EC2: the instance cannot take the option: report, do not retry the same request.
    Unsupported,
    /// Throttling, 5xx, timeouts, connection errors: retry with backoff.
    Transient,
    /// EC2: `DryRunOperation`, the call would have been allowed.
    DryRunOk,
    /// Not sent: this replica may not write (its leader lease is not renewed). Retried by
    /// whichever replica leads.
    NotLeading,
    /// Anything else.
    Other,
}

/// An AWS call that did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {code}: {message}")]
pub struct AwsError {
    /// The API operation.
    pub operation: &'static str,
    /// How it is handled.
    pub kind: AwsErrorKind,
    /// The AWS error code, a CloudWatch query status, or a short description of a transport
    /// failure or an unusable answer.
    pub code: String,
    /// The AWS message, or a description.
    pub message: String,
}

/// What EC2's answer to a modify request says of it: accepted now, maybe applied (a lost answer,
/// a 5xx), or refused.
pub fn answer_of<T>(result: &Result<T, AwsError>) -> Answer {
    match result {
        Ok(_) => Answer::Accepted(k8s_openapi::jiff::Timestamp::now()),
        Err(err) if err.may_have_applied() => Answer::MaybeApplied,
        Err(_) => Answer::Refused,
    }
}

impl AwsError {
    /// An error of `operation`.
    pub fn new(operation: &'static str, kind: AwsErrorKind, code: &str, message: impl Into<String>) -> AwsError {
        AwsError {
            operation,
            kind,
            code: code.into(),
            message: message.into(),
        }
    }

    /// How planning and status handle it.
    pub fn failure_kind(&self) -> FailureKind {
        match self.kind {
            AwsErrorKind::PermissionDenied => FailureKind::PermissionDenied,
            AwsErrorKind::Unsupported => FailureKind::Unsupported,
            AwsErrorKind::Transient | AwsErrorKind::NotLeading => FailureKind::Transient,
            _ => FailureKind::Other,
        }
    }

    /// The failure as planning and status see it (`code: message`).
    pub fn to_failure(&self) -> Failure {
        Failure {
            kind: self.failure_kind(),
            message: format!("{}: {}", self.code, self.message),
        }
    }

    /// Whether EC2 may have carried out the request although it answered with this error (the
    /// answer was lost, a retried attempt timed out, a 5xx): only an answer that rejects the
    /// request itself says it was not applied.
    pub fn may_have_applied(&self) -> bool {
        !matches!(
            self.kind,
            AwsErrorKind::NotFound
                | AwsErrorKind::Unsupported
                | AwsErrorKind::PermissionDenied
                | AwsErrorKind::DryRunOk
                | AwsErrorKind::NotLeading
        )
    }

    /// Whether the caller was throttled.
    pub fn is_throttling(&self) -> bool {
        is_throttling(&self.code)
    }
}

/// Whether an error code means the caller was throttled.
pub fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException"
    )
}

/// Classifies an AWS error code; `http_status` (when the service answered) makes any other 5xx
/// transient.
pub fn classify(service: Service, code: &str, http_status: Option<u16>) -> AwsErrorKind {
    match code {
        "UnauthorizedOperation" | "AuthFailure" | "AccessDenied" | "AccessDeniedException" => {
            return AwsErrorKind::PermissionDenied;
        }
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "TooManyRequestsException"
        | "InternalError"
        | "InternalFailure"
        | "InternalServiceError"
        | "InternalServiceFault"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "Unavailable"
        | "RequestExpired"
        | "RequestTimeout"
        | "RequestTimeoutException"
        // What `from_sdk` calls transport failures.
        | "Timeout"
        | "DispatchFailure"
        | "ResponseError"
        // A paginated read restarts from its first page.
        | "InvalidNextToken" => return AwsErrorKind::Transient,
        _ => {}
    }
    if service == Service::Ec2 {
        match code {
            "InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed" => return AwsErrorKind::NotFound,
            "UnsupportedOperation" | "InvalidParameterValue" | "InvalidParameterCombination" | "InvalidParameter" => {
                return AwsErrorKind::Unsupported;
            }
            // The instance is stopping or starting: it takes the change once it is back.
            "IncorrectInstanceState" => return AwsErrorKind::Transient,
            "DryRunOperation" => return AwsErrorKind::DryRunOk,
            _ => {}
        }
    }
    if http_status.is_some_and(|s| (500..600).contains(&s)) {
        AwsErrorKind::Transient
    } else {
        AwsErrorKind::Other
    }
}

/// Converts an SDK error of `operation`.
pub fn from_sdk<E>(service: Service, operation: &'static str, err: SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(service_error) => {
            let e = service_error.err();
            let status = service_error.raw().status().as_u16();
            match e.code() {
                Some(code) => AwsError::new(
                    operation,
                    classify(service, code, Some(status)),
                    code,
                    e.message().unwrap_or_default(),
                ),
                // No code: an answer the SDK could not read (the message says why).
                None => AwsError::new(
                    operation,
                    classify(service, "", Some(status)),
                    "Unknown",
                    format!("HTTP {status}: {}", source_chain(e)),
                ),
            }
        }
        SdkError::TimeoutError(_) => transport(operation, "Timeout", &err),
        SdkError::DispatchFailure(_) => transport(operation, "DispatchFailure", &err),
        SdkError::ResponseError(_) => transport(operation, "ResponseError", &err),
        _ => AwsError::new(
            operation,
            AwsErrorKind::Other,
            "ClientError",
            DisplayErrorContext(&err).to_string(),
        ),
    }
}

/// An error and its sources, `a: b: c` (without the Debug dump of [`DisplayErrorContext`], which
/// includes the whole raw response).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

fn transport<E>(operation: &'static str, code: &str, err: &SdkError<E, HttpResponse>) -> AwsError
where
    E: std::error::Error + 'static,
{
    AwsError::new(
        operation,
        AwsErrorKind::Transient,
        code,
        DisplayErrorContext(err).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_error_codes() {
        let cases = [
            ("InvalidInstanceID.NotFound", AwsErrorKind::NotFound),
            ("UnauthorizedOperation", AwsErrorKind::PermissionDenied),
            ("UnsupportedOperation", AwsErrorKind::Unsupported),
            ("InvalidParameterValue", AwsErrorKind::Unsupported),
            ("RequestLimitExceeded", AwsErrorKind::Transient),
            ("InternalError", AwsErrorKind::Transient),
            ("IncorrectInstanceState", AwsErrorKind::Transient),
            ("DryRunOperation", AwsErrorKind::DryRunOk),
            ("SomethingNew", AwsErrorKind::Other),
        ];
        for (code, want) in cases {
            assert_eq!(classify(Service::Ec2, code, None), want, "{code}");
        }
        assert_eq!(classify(Service::Ec2, "Unknown", Some(503)), AwsErrorKind::Transient);
        assert!(is_throttling("Throttling") && !is_throttling("AccessDenied"));
    }

    #[test]
    fn cloudwatch_error_codes() {
        let cases = [
            ("AccessDenied", None, AwsErrorKind::PermissionDenied),
            ("AccessDeniedException", None, AwsErrorKind::PermissionDenied),
            ("UnauthorizedOperation", None, AwsErrorKind::PermissionDenied),
            ("Throttling", Some(400), AwsErrorKind::Transient),
            ("ThrottlingException", None, AwsErrorKind::Transient),
            ("RequestLimitExceeded", Some(503), AwsErrorKind::Transient),
            ("InternalFailure", None, AwsErrorKind::Transient),
            ("ServiceUnavailable", None, AwsErrorKind::Transient),
            ("Timeout", None, AwsErrorKind::Transient),
            ("DispatchFailure", None, AwsErrorKind::Transient),
            ("SomethingNew", Some(500), AwsErrorKind::Transient),
            ("SomethingNew", Some(503), AwsErrorKind::Transient),
            ("SomethingNew", Some(400), AwsErrorKind::Other),
            ("InvalidParameterValue", Some(400), AwsErrorKind::Other),
            ("SomethingNew", None, AwsErrorKind::Other),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify(Service::CloudWatch, code, status), want, "{code} {status:?}");
        }
    }

    #[test]
    fn failures_keep_code_and_kind() {
        let e = AwsError::new(
            "ModifyInstanceMetadataOptions",
            AwsErrorKind::PermissionDenied,
            "UnauthorizedOperation",
            "You are not authorized",
        );
        let f = e.to_failure();
        assert_eq!(f.kind, FailureKind::PermissionDenied);
        assert_eq!(f.message, "UnauthorizedOperation: You are not authorized");
        assert_eq!(
            e.to_string(),
            "ModifyInstanceMetadataOptions: UnauthorizedOperation: You are not authorized"
        );
    }
}
