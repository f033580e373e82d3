//! The DryRun preflight: before a policy's first real request (in this process, for this
//! generation), the same request with `DryRun=true`. `DryRunOperation` means allowed;
//! `UnauthorizedOperation` means no real request is attempted. An endpoint that ignores DryRun
//! (moto) answers with success, which also means allowed. A denial is remembered for the
//! generation with its own backoff (60s, doubled per denial), so that retries and node events
//! do not ask EC2 again meanwhile.

use super::context::Context;
use super::events::{PolicyEvent, publish_repeating};
use crate::aws::AwsErrorKind;
use imds_core::api::InstanceMetadataPolicy;
use imds_core::observation::Failure;
use imds_core::options::FullOptions;
use kube::ResourceExt;
use std::time::Instant;

/// Checks that `request` to `instance_id` would be allowed; `Err` when nothing may be sent.
pub async fn preflight(
    ctx: &Context,
    policy: &InstanceMetadataPolicy,
    instance_id: &str,
    request: &FullOptions,
) -> Result<(), Failure> {
    let key = (policy.name_any(), policy.metadata.generation.unwrap_or_default());
    if ctx.memo.preflight_passed(&key) {
        return Ok(());
    }
    // Denied before, for this generation: not asked again until its backoff ends.
    if let Some(failure) = ctx.memo.preflight_denied(&key, Instant::now()) {
        return Err(failure);
    }
    match ctx.clients.ec2.modify(instance_id, request, true).await {
        Ok(_) => {}
        Err(e) if e.kind == AwsErrorKind::DryRunOk => {}
        Err(e) if e.kind == AwsErrorKind::PermissionDenied => {
            let mut failure = e.to_failure();
            failure.message = format!("preflight (DryRun) denied: {}", failure.message);
            let times = ctx.memo.set_preflight_denied(key, failure.clone(), Instant::now());
            let note = format!(
                "no instance modified: {} (denied {times} times in a row)",
                failure.message
            );
            publish_repeating(
                ctx,
                policy,
                PolicyEvent::warning(None, failure.kind.reason(), "Preflight", note),
            )
            .await;
            return Err(failure);
        }
        Err(e) if e.kind == AwsErrorKind::Transient => return Err(e.to_failure()),
        // An error about this one instance (gone, cannot take the option) says nothing about
        // permissions: send the real requests, which report per instance, and check again
        // next time.
        Err(e) => {
            tracing::debug!(instance = %instance_id, error = %e, "preflight inconclusive");
            return Ok(());
        }
    }
    ctx.memo.set_preflight_passed(key);
    Ok(())
}
