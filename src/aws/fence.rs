//! The write fence: EC2 writes (ModifyInstanceMetadataOptions and ModifyInstanceMetadataDefaults,
//! DryRun included) pass only while
//! this replica may write — while it holds the leader lease and its renew deadline has not
//! passed ([`imds_core::leader::WriteWindow`]). The adaptor checks it before a request is sent,
//! and an SDK interceptor checks it again before every attempt, so that a retry never goes out
//! after the deadline either.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use imds_core::leader::{Timings, WriteWindow};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Whether EC2 writes may be sent now. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct WriteFence {
    window: Option<Arc<Mutex<WriteWindow>>>,
}

/// A write the fence stopped.
#[derive(Debug, thiserror::Error)]
#[error("not sent: this replica's leader lease is not renewed (renew deadline passed or lease lost)")]
pub struct Fenced;

impl WriteFence {
    /// Always open: leader election is off (one replica by configuration).
    pub fn open() -> WriteFence {
        WriteFence { window: None }
    }

    /// Closed until [`WriteFence::renewed`] opens it.
    pub fn closed() -> WriteFence {
        WriteFence {
            window: Some(Arc::new(Mutex::new(WriteWindow::default()))),
        }
    }

    /// A renewal that started at `attempt_started` succeeded.
    pub fn renewed(&self, attempt_started: Instant, timings: &Timings) {
        if let Some(window) = &self.window {
            // A poisoned lock still holds a valid window (it is plain data).
            window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .renewed(attempt_started, timings);
        }
    }

    /// Lease released or lost: nothing more is sent.
    pub fn close(&self) {
        if let Some(window) = &self.window {
            window.lock().unwrap_or_else(|e| e.into_inner()).close();
        }
    }

    /// `Ok` when a write may start now.
    pub fn check(&self) -> Result<(), Fenced> {
        match &self.window {
            None => Ok(()),
            Some(window) => {
                let open = window.lock().unwrap_or_else(|e| e.into_inner()).open_at(Instant::now());
                if open { Ok(()) } else { Err(Fenced) }
            }
        }
    }
}

impl Intercept for WriteFence {
    fn name(&self) -> &'static str {
        "ImdsOperatorWriteFence"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.check().map_err(BoxError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn open_closed_renewed() {
        assert!(WriteFence::open().check().is_ok());
        let fence = WriteFence::closed();
        assert!(fence.check().is_err(), "closed until the first renewal");
        let timings = Timings::for_lease(Duration::from_secs(15)).expect("valid");
        fence.renewed(Instant::now(), &timings);
        assert!(fence.check().is_ok());
        let clone = fence.clone();
        clone.close();
        assert!(fence.check().is_err(), "clones share the window");
        fence.renewed(Instant::now() - Duration::from_secs(11), &timings);
        assert!(
            fence.check().is_err(),
            "a renewal older than the deadline does not open it"
        );
    }
}
