//! Writes to the policy object: the one server-side-apply status patch of a reconcile, the
//! restore finalizer, and the per-policy gauges that mirror the status.

use super::context::Context;
use super::decode::Undecodable;
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

/// Reports a policy this version cannot read: `Ready=False`, `Stalled=True` (reason
/// `SpecNotUnderstood`, serde's message) and a Warning. Failures are logged, never fatal.
pub async fn report_undecodable(ctx: &Context, bad: &Undecodable) {
    use imds_core::api::condition;
    use imds_core::reason::Reason;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kube::api::{ApiResource, DynamicObject};
    use kube::runtime::events::{Event, EventType};
    tracing::error!(policy = %bad.name, generation = bad.generation, error = %bad.error, "policy not understood by this version; skipped");
    let message = format!(
        "this operator version cannot read the policy (is the CRD newer than the operator?): {}",
        bad.error
    );
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let cond = |type_: &str, status: &str| Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Reason::SpecNotUnderstood.to_string(),
        message: message.clone(),
        last_transition_time: now.clone(),
        observed_generation: Some(bad.generation),
    };
    let patch = serde_json::json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "InstanceMetadataPolicy",
        "status": {
            "observedGeneration": bad.generation,
            "conditions": [cond(condition::READY, "False"), cond(condition::RECONCILING, "False"), cond(condition::STALLED, "True")],
        },
    });
    let resource = ApiResource::erase::<InstanceMetadataPolicy>(&());
    let api: Api<DynamicObject> = Api::all_with(ctx.clients.kube.clone(), &resource);
    if let Err(e) = api
        .patch_status(&bad.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
    {
        tracing::warn!(policy = %bad.name, error = %e, "could not report the policy as not understood");
    }
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(resource.api_version.clone()),
        kind: Some(resource.kind.clone()),
        name: Some(bad.name.clone()),
        uid: bad.uid.clone(),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: Reason::SpecNotUnderstood.to_string(),
        note: Some(message.chars().take(1000).collect()),
        action: "Decode".into(),
        secondary: None,
    };
    if let Err(e) = ctx.clients.recorder.publish(&event, &reference).await {
        tracing::warn!(policy = %bad.name, error = %e, "could not publish event");
    }
}
