//! Errors that end a reconcile early (the status patch is not written). Per-instance EC2 errors
//! are not among them: they are reported on the node and the other nodes go on.

use imds_core::selection::InvalidSelector;

/// What kind of thing failed, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// The policy itself cannot be used (its selector does not parse).
    InvalidPolicy,
    /// A Kubernetes API call failed.
    KubeApi,
    /// The node cache did not fill in time.
    CacheNotReady,
    /// Restoring instances before a deletion is not finished.
    RestoreIncomplete,
    /// The reconcile panicked (a bug): contained, reported as this policy's error.
    Panic,
}

impl ErrorCategory {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::InvalidPolicy => "invalid_policy",
            ErrorCategory::KubeApi => "kube_api",
            ErrorCategory::CacheNotReady => "cache_not_ready",
            ErrorCategory::RestoreIncomplete => "restore_incomplete",
            ErrorCategory::Panic => "panic",
        }
    }
}

/// A reconcile that ended early.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The policy's selector cannot be parsed.
    #[error(transparent)]
    InvalidSelector(#[from] InvalidSelector),
    /// A Kubernetes API call failed.
    #[error("{action} {policy}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The policy.
        policy: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The node store never became ready.
    #[error("the node cache is not ready")]
    NodeStoreNotReady,
    /// Restoring instances before deletion is not finished (errors were reported).
    #[error("restoring {policy}: {remaining} instances not restored yet")]
    RestoreIncomplete {
        /// The policy.
        policy: String,
        /// Instances left.
        remaining: usize,
    },
    /// The reconcile panicked; the process and the other policies go on.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

impl ReconcileError {
    /// The error's category.
    pub fn category(&self) -> ErrorCategory {
        match self {
            ReconcileError::InvalidSelector(_) => ErrorCategory::InvalidPolicy,
            ReconcileError::Kube { .. } => ErrorCategory::KubeApi,
            ReconcileError::NodeStoreNotReady => ErrorCategory::CacheNotReady,
            ReconcileError::RestoreIncomplete { .. } => ErrorCategory::RestoreIncomplete,
            ReconcileError::Panicked(_) => ErrorCategory::Panic,
        }
    }
}

/// Runs a reconcile, turning a panic into [`ReconcileError::Panicked`] so that one policy's bug
/// never takes the process (and every other policy) down.
pub async fn contained<T>(
    reconcile: impl std::future::Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(reconcile).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            Err(ReconcileError::Panicked(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        let cases = [
            (
                ReconcileError::InvalidSelector(InvalidSelector {
                    name: "p".into(),
                    message: "bad".into(),
                }),
                "invalid_policy",
            ),
            (ReconcileError::NodeStoreNotReady, "cache_not_ready"),
            (ReconcileError::Panicked("boom".into()), "panic"),
            (
                ReconcileError::RestoreIncomplete {
                    policy: "p".into(),
                    remaining: 2,
                },
                "restore_incomplete",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.category().as_str(), want, "{error}");
        }
    }

    #[tokio::test]
    async fn panics_are_contained() {
        let ok = contained(async { Ok::<u8, ReconcileError>(7) }).await;
        assert!(matches!(ok, Ok(7)));
        let err = contained(async {
            if std::hint::black_box(true) {
                panic!("index out of bounds");
            }
            Ok::<u8, ReconcileError>(0)
        })
        .await;
        match err {
            Err(ReconcileError::Panicked(message)) => assert_eq!(message, "index out of bounds"),
            other => panic!("not contained: {other:?}"),
        }
    }
}
