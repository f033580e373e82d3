//! The `InstanceMetadataDefaults` singleton's controller: off unless its CRD is installed (the
//! operator looks again every few minutes) and the object named `default` exists. It reads the
//! region's account defaults, and in `Enforce` mode sets those that differ with
//! `ModifyInstanceMetadataDefaults` (through the write fence and its own rate limiter); `Audit`
//! only reports. A declarative policy that manages the defaults stalls it with
//! `DeclarativePolicyEnforced`. The decisions are the core's ([`imds_core::defaults`]).

use super::context::Context;
use crate::aws::AwsErrorKind;
use futures::StreamExt;
use imds_core::api::{GROUP, MANAGER};
use imds_core::defaults::{self, AccountDefaults, DefaultsDecision, SingletonOutcome};
use imds_core::defaults_api::{InstanceMetadataDefaults, InstanceMetadataDefaultsStatus};
use imds_core::observation::{Failure, FailureKind};
use imds_core::reason::Reason;
use imds_core::requeue::backoff_base;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// How often the operator looks whether the CRD has been installed.
const CRD_RECHECK: Duration = Duration::from_secs(300);

/// Errors that end a reconcile of the singleton (its status could not be written).
#[derive(Debug, thiserror::Error)]
#[error("patching the status of InstanceMetadataDefaults {name}: {source}")]
pub struct SingletonError {
    name: String,
    #[source]
    source: kube::Error,
}

/// Runs the singleton's controller until `shutdown` resolves (it waits for the CRD first).
pub async fn run(
    ctx: Arc<Context>,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<InstanceMetadataDefaults> = Api::all(client);
    let mut shutdown = Box::pin(shutdown);
    let mut told = false;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if !told {
                    tracing::info!(
                        "the InstanceMetadataDefaults CRD is not installed: the account defaults are only read, never changed"
                    );
                    told = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing InstanceMetadataDefaults failed; trying again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(CRD_RECHECK) => {}
            _ = &mut shutdown => return,
        }
    }
    tracing::info!("InstanceMetadataDefaults controller starting");
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(err) = result {
                tracing::debug!(error = %err, "InstanceMetadataDefaults reconcile not run");
            }
            futures::future::ready(())
        })
        .await;
}

/// Reconciles the singleton: read, decide, write (Enforce), report.
async fn reconcile(object: Arc<InstanceMetadataDefaults>, ctx: Arc<Context>) -> Result<Action, SingletonError> {
    let name = object.name_any();
    let (outcome, read) = match ctx.account_defaults.refresh(&ctx.clients.ec2).await {
        Err(failure) => (SingletonOutcome::Failed(failure), None),
        Ok(read) => {
            let decision = defaults::decide(&name, &object.spec, &read);
            (act(&ctx, &object, decision, &read).await, Some(read))
        }
    };
    let status = status_of(&object, &outcome, read.as_ref());
    let api: Api<InstanceMetadataDefaults> = Api::all(ctx.clients.kube.clone());
    let patch = serde_json::json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "InstanceMetadataDefaults",
        "status": status,
    });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| SingletonError {
            name: name.clone(),
            source,
        })?;
    Ok(Action::requeue(next_look(&ctx, &outcome)))
}

/// Carries out a decision; what came of it.
async fn act(
    ctx: &Context,
    object: &InstanceMetadataDefaults,
    decision: DefaultsDecision,
    read: &AccountDefaults,
) -> SingletonOutcome {
    match decision {
        DefaultsDecision::WrongName => SingletonOutcome::WrongName,
        DefaultsDecision::InSync => SingletonOutcome::InSync,
        DefaultsDecision::AuditDrift(drift) => SingletonOutcome::AuditDrift(drift),
        DefaultsDecision::DeclarativePolicy(drift) => SingletonOutcome::DeclarativePolicy(drift, custom_note(read)),
        DefaultsDecision::Modify(request, drift) => match ctx.clients.ec2.modify_defaults(&request, false).await {
            Ok(()) => {
                let changes: Vec<String> = drift.iter().map(ToString::to_string).collect();
                publish(
                    ctx,
                    object,
                    EventType::Normal,
                    Reason::Modified,
                    format!("set the account's IMDS defaults: {}", changes.join(", ")),
                )
                .await;
                // Read again at once, so every policy compares with the new defaults.
                let _ = ctx.account_defaults.refresh(&ctx.clients.ec2).await;
                SingletonOutcome::Modified(drift)
            }
            Err(err) => {
                let failure = defaults::classify_refusal(err.to_failure(), Some(read));
                publish(
                    ctx,
                    object,
                    EventType::Warning,
                    failure.kind.reason(),
                    format!("ModifyInstanceMetadataDefaults: {}", failure.message),
                )
                .await;
                match (failure.kind, err.kind) {
                    (FailureKind::DeclarativePolicy, _) => {
                        SingletonOutcome::DeclarativePolicy(drift, custom_note(read))
                    }
                    (_, AwsErrorKind::NotLeading) => SingletonOutcome::Failed(Failure {
                        kind: FailureKind::Transient,
                        message: failure.message,
                    }),
                    _ => SingletonOutcome::Failed(failure),
                }
            }
        },
    }
}

/// The declarative policy's custom message, for status.
fn custom_note(read: &AccountDefaults) -> String {
    read.managed_exception_message
        .as_deref()
        .map(|m| format!("; the policy says: {m}"))
        .unwrap_or_default()
}

fn status_of(
    object: &InstanceMetadataDefaults,
    outcome: &SingletonOutcome,
    read: Option<&AccountDefaults>,
) -> InstanceMetadataDefaultsStatus {
    let generation = object.meta().generation.unwrap_or_default();
    let previous = object.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    defaults::singleton_status(outcome, read, generation, &previous, now)
}

/// When to look again: the resync period, or a failure kind's backoff.
fn next_look(ctx: &Context, outcome: &SingletonOutcome) -> Duration {
    match outcome {
        SingletonOutcome::Failed(failure) => backoff_base(failure.kind)
            .unwrap_or(ctx.config.resync_period)
            .min(ctx.config.resync_period),
        _ => ctx.config.resync_period,
    }
}

/// An Event on the singleton; a failure to publish is logged, never fatal.
async fn publish(ctx: &Context, object: &InstanceMetadataDefaults, type_: EventType, reason: Reason, note: String) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(defaults::bounded(&note)),
        action: "ModifyInstanceMetadataDefaults".to_string(),
        secondary: None,
    };
    if let Err(err) = ctx.clients.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %err, "could not publish an InstanceMetadataDefaults event");
    }
}

fn error_policy(_: Arc<InstanceMetadataDefaults>, error: &SingletonError, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "InstanceMetadataDefaults reconcile failed");
    Action::requeue(Duration::from_secs(10))
}
