//! Writes to the policy object: the one server-side-apply status patch of a reconcile, the
//! restore finalizer, and the per-policy gauges that mirror the status.

use super::context::Context;
use super::error::ReconcileError;
use imds_core::api::{
    GROUP, InstanceMetadataPolicy, InstanceMetadataPolicyStatus, MANAGER, OnDelete, RESTORE_FINALIZER,
};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

/// Writes the status with server-side apply (the operator owns every status field).
pub async fn patch_status(
    ctx: &Context,
    name: &str,
    status: &InstanceMetadataPolicyStatus,
) -> Result<(), ReconcileError> {
    let api: Api<InstanceMetadataPolicy> = Api::all(ctx.clients.kube.clone());
    let patch = serde_json::json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "InstanceMetadataPolicy",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| ReconcileError::Kube {
            action: "patching status of",
            policy: name.to_string(),
            source,
        })?;
    Ok(())
}

/// Adds the restore finalizer to `onDelete: Restore` policies and removes it from `Retain`
/// ones.
pub async fn sync_finalizer(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<(), ReconcileError> {
    let has = policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER);
    let wants = policy.spec.on_delete == OnDelete::Restore;
    if has == wants {
        return Ok(());
    }
    let mut finalizers = without_restore_finalizer(policy);
    if wants {
        finalizers.push(RESTORE_FINALIZER.to_string());
    }
    set_finalizers(policy, ctx, finalizers).await
}

/// The policy's finalizers less the restore finalizer.
pub fn without_restore_finalizer(policy: &InstanceMetadataPolicy) -> Vec<String> {
    policy
        .finalizers()
        .iter()
        .filter(|f| *f != RESTORE_FINALIZER)
        .cloned()
        .collect()
}

/// Replaces the policy's finalizers (merge patch with the resourceVersion, so a concurrent
/// change fails and is retried).
pub async fn set_finalizers(
    policy: &InstanceMetadataPolicy,
    ctx: &Context,
    finalizers: Vec<String>,
) -> Result<(), ReconcileError> {
    let api: Api<InstanceMetadataPolicy> = Api::all(ctx.clients.kube.clone());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": policy.resource_version()}
    });
    api.patch(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| ReconcileError::Kube {
            action: "updating finalizers of",
            policy: policy.name_any(),
            source,
        })?;
    Ok(())
}

/// The policy's node counts as gauges.
pub fn record_gauges(ctx: &Context, name: &str, s: &InstanceMetadataPolicyStatus) {
    ctx.metrics.policy_counts(
        name,
        &[
            ("matched", s.matched_nodes),
            ("compliant", s.compliant_nodes),
            ("drifted", s.drifted_nodes),
            ("pending", s.pending_nodes),
            ("skipped", s.skipped_nodes),
            ("failed", s.failed_nodes),
            ("conflicted", s.conflicted_nodes),
            ("blocked", s.blocked_nodes),
        ],
    );
}
