//! Injected failures: `RequestLimitExceeded` throttling, `UnauthorizedOperation` denials, any
//! other error a test wants the next calls of an action answered with, and timed storms of
//! errors (see `docs/ec2-semantics.md`, "Throttling", "Errors the double returns" and "Faults
//! in time"). The black hole, which answers nothing at all, is in `black_hole`.
//!
//! These come on top of the token buckets (`buckets`), which are off unless a test sets them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::Ec2Double;
use super::error::ApiError;
use super::state::{Shared, Storm};

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

    /// EC2's answer to a failure on its side: HTTP 500 `InternalError`.
    pub fn internal_error() -> InjectedError {
        InjectedError {
            status: 500,
            code: "InternalError".into(),
            message: "An internal error has occurred. Retry your request, but if the problem persists, \
                      contact us with details by posting a message on AWS re:Post."
                .into(),
        }
    }

    /// EC2's answer when it is overloaded: HTTP 503 `Unavailable`.
    pub fn unavailable() -> InjectedError {
        InjectedError {
            status: 503,
            code: "Unavailable".into(),
            message: "The server is overloaded and can't handle the request.".into(),
        }
    }

    pub(super) fn api_error(&self) -> ApiError {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, &self.code, self.message.clone())
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

    /// For `duration` from now, every call of one of `actions` (of any action when empty) is
    /// answered with `error`, ahead of any other check and of the errors queued by
    /// [`Ec2Double::fail`] (those wait for the storm to pass). Whether a call falls in the storm
    /// is decided when it arrives. Calls are recorded as usual. When storms overlap, the one
    /// started last answers.
    pub fn storm(&self, actions: &[&str], error: InjectedError, duration: Duration) {
        let storm = Storm {
            actions: actions.iter().map(|a| a.to_string()).collect(),
            error,
            until: Instant::now() + duration,
        };
        self.shared().storms.push(storm);
    }

    /// Ends every storm and the black hole now. Requests held by the black hole are dropped
    /// within 50 ms, unanswered (see [`Ec2Double::black_hole`]).
    pub fn calm(&self) {
        let mut shared = self.shared();
        shared.storms.clear();
        shared.black_hole_until = None;
    }
}

/// The error a storm answers `action` with at `now`, if one rages (storms that have passed are
/// forgotten).
pub(super) fn storm_error(shared: &mut Shared, action: &str, now: Instant) -> Option<ApiError> {
    shared.storms.retain(|storm| storm.until > now);
    let storm = shared
        .storms
        .iter()
        .rev()
        .find(|storm| storm.actions.is_empty() || storm.actions.contains(action))?;
    Some(storm.error.api_error())
}

/// The next injected error for `action`, if any (it is used up).
pub(super) fn take_injected(shared: &mut Shared, action: &str) -> Option<ApiError> {
    let injected = shared.injected.get_mut(action).and_then(VecDeque::pop_front)?;
    Some(injected.api_error())
}
