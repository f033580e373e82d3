//! Injected failures: `RequestLimitExceeded` throttling, `UnauthorizedOperation` denials, and
//! any other error a test wants an action answered with (see `docs/ec2-semantics.md`,
//! "Throttling" and "Errors the double returns").
//!
//! The double has no token buckets of its own: a test decides exactly which calls are throttled.

use std::collections::VecDeque;

use axum::http::StatusCode;

use super::Ec2Double;
use super::error::ApiError;
use super::state::Shared;

/// An error the double answers with instead of handling a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedError {
    /// HTTP status.
    pub status: u16,
    /// EC2 error code, e.g. `InternalError`.
    pub code: String,
    /// EC2 error message.
    pub message: String,
}

impl InjectedError {
    /// EC2's throttling answer: HTTP 503 `RequestLimitExceeded`.
    pub fn request_limit_exceeded() -> InjectedError {
        InjectedError {
            status: 503,
            code: "RequestLimitExceeded".into(),
            message: "Request limit exceeded.".into(),
        }
    }
}

impl Ec2Double {
    /// Answers every call of `action` (DryRun calls too) with `UnauthorizedOperation`.
    pub fn deny(&self, action: &str) {
        self.shared().denied.insert(action.to_string());
    }

    /// Undoes [`Ec2Double::deny`].
    pub fn allow(&self, action: &str) {
        self.shared().denied.remove(action);
    }

    /// The next `n` calls of `action` are answered with HTTP 503 `RequestLimitExceeded`.
    pub fn throttle(&self, action: &str, n: u32) {
        self.fail(action, n, InjectedError::request_limit_exceeded());
    }

    /// The next `n` calls of `action` are answered with `error` (queued after any errors
    /// injected before).
    pub fn fail(&self, action: &str, n: u32, error: InjectedError) {
        let mut shared = self.shared();
        let queue = shared.injected.entry(action.to_string()).or_default();
        queue.extend(std::iter::repeat_n(error, n as usize));
    }
}

/// The next injected error for `action`, if any (it is used up).
pub(super) fn take_injected(shared: &mut Shared, action: &str) -> Option<ApiError> {
    let injected = shared.injected.get_mut(action).and_then(VecDeque::pop_front)?;
    let status = StatusCode::from_u16(injected.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(ApiError::new(status, &injected.code, injected.message))
}
