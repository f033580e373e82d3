//! Watches and triggers: policies are the primary objects; Node changes that matter (labels,
//! providerID, readiness, deletion) trigger the policies that select or selected the node; a
//! policy spec change triggers every policy (priorities and conflicts span policies).

use super::context::{Context, Stores};
use super::decode::PolicyDecoder;
use super::memo::trigger_of;
use super::node_store::{NodeChange, NodeStore, NodeStoreWriter};
use super::policy_writes::report_undecodable;
use super::reconcile::{error_policy, reconcile};
use crate::telemetry::health::Health;
use crate::telemetry::memory;
use futures::{FutureExt, Stream, StreamExt, future};
use imds_core::api::InstanceMetadataPolicy;
use imds_core::node::{NodeFacts, SlimNode};
use imds_core::selection::PolicyInput;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::{Config as ControllerRuntimeConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Nodes per page of the initial list (and of every re-list): the body of one page is what the
/// operator holds at once (an EKS Node is ~13 kB of JSON).
const NODE_PAGE_SIZE: u32 = 100;

/// The Node store and the stream of the changes that matter (a node whose labels, providerID
/// or readiness changed, or that was deleted). The stream must be polled for the store to fill.
/// Nodes are read as [`SlimNode`]s (only what the store keeps is parsed into memory) in pages: a
/// list with the default semantic is paginated, while `resourceVersion=0` ("any") would be
/// served whole from the watch cache.
pub fn node_watch(
    client: kube::Client,
    health: Arc<Health>,
) -> (NodeStore, impl Stream<Item = NodeChange> + Send + 'static) {
    let store = NodeStore::default();
    let mut writer = NodeStoreWriter::new(store.clone());
    let api: Api<SlimNode> = Api::all(client);
    let config = watcher::Config::default().page_size(NODE_PAGE_SIZE);
    let stream = watcher(api, config).default_backoff().flat_map(move |event| {
        health.watch_event("nodes", event.is_ok());
        let listed = matches!(event, Ok(watcher::Event::InitDone));
        let changed = match event {
            Ok(event) => writer.on_event(event),
            Err(err) => {
                tracing::warn!(error = %err, "node watch error");
                Vec::new()
            }
        };
        if listed {
            // The pages of a (re-)list and the store it replaced are freed; give the memory back.
            memory::release_free_memory();
        }
        futures::stream::iter(changed)
    });
    (store, stream)
}

/// The policies a changed node concerns: those selecting it now and those that selected it.
fn policies_for_node(ctx: &Context, node: &NodeFacts) -> Vec<ObjectRef<InstanceMetadataPolicy>> {
    let mut names: Vec<String> = ctx
        .stores
        .policies
        .state()
        .iter()
        .filter(|p| PolicyInput::from_policy(p).is_ok_and(|p| p.selects(&node.labels)))
        .map(|p| p.name_any())
        .collect();
    names.extend(ctx.memo.policies_that_selected(&node.name));
    names.sort();
    names.dedup();
    names.into_iter().map(|n| ObjectRef::new(&n)).collect()
}

/// A policy is reconciled when its spec (generation), annotations (rollout resume) or deletion
/// state change; status writes do not trigger it.
fn policy_trigger_hash(policy: &InstanceMetadataPolicy) -> Option<u64> {
    Some(trigger_of(policy))
}

/// Drops the cached observation of a deleted node's instance.
fn forget_instance(ctx: &Arc<Context>, node: &NodeFacts) {
    if let Ok(instance) = imds_core::provider_id::parse(node.provider_id.as_deref()) {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.cache.lock().await.forget(&instance.instance_id) });
    }
}

/// The policy watch, decoded policy by policy ([`PolicyDecoder`]): a policy this version cannot
/// read is reported (when `report` is given, once per generation) and skipped. Watch errors and
/// successes are reported to `health` as the watch `name`.
fn policy_watch(
    client: kube::Client,
    name: &'static str,
    health: Arc<Health>,
    report: Option<Arc<Context>>,
) -> impl Stream<Item = Result<watcher::Event<InstanceMetadataPolicy>, watcher::Error>> + Send + 'static {
    let resource = ApiResource::erase::<InstanceMetadataPolicy>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut decoder = PolicyDecoder::default();
    let mut reported: HashSet<(String, i64)> = HashSet::new();
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .flat_map(move |event| {
            health.watch_event(name, event.is_ok());
            let out: Vec<_> = match event {
                Ok(event) => {
                    let (events, bad) = decoder.on_event(event);
                    for b in bad {
                        if let Some(ctx) = &report
                            && reported.insert((b.name.clone(), b.generation))
                        {
                            let ctx = ctx.clone();
                            tokio::spawn(async move { report_undecodable(&ctx, &b).await });
                        }
                    }
                    events.into_iter().map(Ok).collect()
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        })
}

/// Triggers of one policy within this window run one reconcile: a burst of node events (a node
/// group scaling up) coalesces, and a single new node waits no longer than this.
const TRIGGER_DEBOUNCE: Duration = Duration::from_millis(30);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx_builder: impl FnOnce(Stores) -> Arc<Context>,
    client: kube::Client,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (policy_reader, policy_writer) = reflector::store();
    let (node_reader, node_changes) = node_watch(client.clone(), health.clone());
    let ctx = ctx_builder(Stores {
        nodes: node_reader,
        policies: policy_reader.clone(),
    });
    let primary = policy_watch(client.clone(), "policies", health.clone(), Some(ctx.clone()))
        .reflect(policy_writer)
        .applied_objects()
        .predicate_filter(policy_trigger_hash, Default::default());

    // A policy created, changed or deleted can change every other policy's outcome.
    let mut generations: HashMap<String, i64> = HashMap::new();
    let deleted_ctx = ctx.clone();
    let policy_changes = policy_watch(client.clone(), "policy-changes", health, None).filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                let generation = p.meta().generation.unwrap_or_default();
                generations.insert(p.name_any(), generation) != Some(generation)
            }
            Ok(watcher::Event::Delete(p)) => {
                generations.remove(&p.name_any());
                deleted_ctx.forget_policy(&p.name_any());
                true
            }
            _ => false,
        };
        future::ready(changed.then_some(()))
    });

    let node_ctx = ctx.clone();
    let node_triggers = node_changes.flat_map(move |change| {
        if change.gone {
            forget_instance(&node_ctx, &change.node);
        }
        futures::stream::iter(policies_for_node(&node_ctx, &change.node))
    });

    let config = ControllerRuntimeConfig::default()
        .concurrency(ctx.config.concurrency)
        .debounce(TRIGGER_DEBOUNCE);
    // The singleton's controller stops with the policies' (and is dropped with them when the
    // lease is lost).
    let shutdown = shutdown.shared();
    let singleton = super::singleton::run(ctx.clone(), client.clone(), shutdown.clone());
    let reports = super::policy_report_writer::run(ctx.clone(), shutdown.clone());
    let policies = Controller::for_stream(primary, policy_reader)
        .with_config(config)
        .reconcile_on(node_triggers)
        .reconcile_all_on(policy_changes)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((obj, _)) => tracing::debug!(policy = %obj.name, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "reconcile not run"),
            }
            future::ready(())
        });
    future::join3(policies, singleton, reports).await;
}
