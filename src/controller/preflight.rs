//! The DryRun preflight: before a policy's first real request (in this process, for this
//! generation), the same request with `DryRun=true`. `DryRunOperation` means allowed;
//! `UnauthorizedOperation` means no real request is attempted. An endpoint that ignores DryRun
//! (moto) answers with success, which also means allowed.

use super::context::Context;
use super::events::{PolicyEvent, publish};
use crate::aws::AwsErrorKind;
use imds_core::api::InstanceMetadataPolicy;
use imds_core::observation::Failure;
use imds_core::options::FullOptions;
use kube::ResourceExt;

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
    match ctx.clients.ec2.modify(instance_id, request, true).await {
        Ok(_) => {}
        Err(e) if e.kind == AwsErrorKind::DryRunOk => {}
        Err(e) if e.kind == AwsErrorKind::PermissionDenied => {
            let mut failure = e.to_failure();
            failure.message = format!("preflight (DryRun) denied: {}", failure.message);
            let note = format!("no instance modified: {}", failure.message);
            publish(
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
