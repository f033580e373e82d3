//! Deleting a policy. `Retain` policies carry no finalizer and simply go; `Restore` policies keep
//! the finalizer `imds-operator.io/restore` until every instance they selected has the options it
//! had before the operator first changed it (the instance tag `imds-operator.io:original-options`),
//! merged under whatever the remaining policies still decide. Instances and nodes that are gone
//! count as done, so `kubectl delete` never waits on a vanished node.

use crate::api::{InstanceMetadataPolicy, OnDelete, RESTORE_FINALIZER};
use crate::context::Context;
use crate::ec2::Ec2ErrorKind;
use crate::options::{FullOptions, ObservedOptions};
use crate::plan::Observation;
use crate::provider_id;
use crate::reconcile::{ReconcileError, observe, publish, refresh, set_finalizers};
use crate::selection::{self, PolicyInput};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

/// What to do for one instance when its policy goes away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreStep {
    /// Send this request (`None`: the instance already has these options).
    pub modify: Option<FullOptions>,
    /// Remove the original-options tag (no remaining policy manages the instance).
    pub forget_original: bool,
}

/// Pure: the original options under what the remaining policies (those still selecting the
/// node) enforce; the tag stays while any remaining policy enforces something, so that policy's
/// own deletion can restore later.
pub fn restore_step(original: &FullOptions, observed: &ObservedOptions, remaining: &[&PolicyInput]) -> RestoreStep {
    let decisions = selection::decide(remaining.iter().copied());
    let enforced = selection::enforced_options(&decisions);
    let target = FullOptions::merge(&enforced, &original.to_options());
    let current = FullOptions::merge(&Default::default(), &observed.values);
    let complete = crate::options::Field::ALL
        .iter()
        .all(|f| observed.values.get(*f).is_some());
    RestoreStep {
        modify: (current != target || !complete).then_some(target),
        forget_original: enforced == Default::default(),
    }
}

/// Runs when the policy has a deletion timestamp.
pub async fn cleanup(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = policy.name_any();
    if !policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER) {
        ctx.forget_policy(&name);
        return Ok(Action::await_change());
    }
    if policy.spec.on_delete == OnDelete::Restore {
        restore(policy, ctx).await?;
    }
    let finalizers = policy
        .finalizers()
        .iter()
        .filter(|f| *f != RESTORE_FINALIZER)
        .cloned()
        .collect();
    set_finalizers(policy, ctx, finalizers).await?;
    ctx.forget_policy(&name);
    Ok(Action::await_change())
}

async fn restore(policy: &InstanceMetadataPolicy, ctx: &Context) -> Result<(), ReconcileError> {
    let name = policy.name_any();
    let observed = observe(policy, ctx, true).await?;
    refresh(ctx, &observed.instance_ids, true).await;
    let mut restored = 0usize;
    let mut remaining_errors = Vec::new();
    for node in &observed.selected {
        let Ok(instance) = provider_id::parse(node.provider_id.as_deref()) else {
            continue;
        };
        let id = instance.instance_id;
        let (observation, original) = {
            let cache = ctx.cache.lock().await;
            let observation = cache.observations([&id]).remove(&id);
            (observation, cache.original(&id).and_then(FullOptions::from_tag_value))
        };
        let current = match observation {
            Some(Observation::Found(o)) => o,
            Some(Observation::NotFound) | None => continue,
            Some(Observation::Failed(f)) => {
                remaining_errors.push(format!("{id}: {}", f.message));
                continue;
            }
        };
        let Some(original) = original else { continue };
        let remaining: Vec<&PolicyInput> = observed.policies.iter().filter(|p| p.selects(&node.labels)).collect();
        if current.state == crate::options::ApplyState::Pending {
            remaining_errors.push(format!("{id}: a change is pending; restoring after it applied"));
            continue;
        }
        let step = restore_step(&original, &current, &remaining);
        if let Some(request) = step.modify {
            if !ctx.cache.lock().await.claim(&id) {
                remaining_errors.push(format!("{id}: another change is in flight"));
                continue;
            }
            let result = ctx.ec2.modify(&id, &request, false).await;
            {
                let mut cache = ctx.cache.lock().await;
                cache.release(&id);
                if let Ok(answer) = &result {
                    let tag_keys = cache.tag_keys(&id).map(<[String]>::to_vec).unwrap_or_default();
                    cache.observe(
                        &id,
                        Observation::Found(answer.clone()),
                        tag_keys,
                        tokio::time::Instant::now(),
                    );
                }
            }
            match result {
                Ok(_) => {
                    restored += 1;
                    let note = format!("node {} ({id}): restored {request}", node.name);
                    publish(
                        ctx,
                        policy,
                        Some(&node.name),
                        EventType::Normal,
                        "Restored",
                        "ModifyInstanceMetadataOptions",
                        note,
                    )
                    .await;
                }
                Err(e) if e.kind == Ec2ErrorKind::NotFound => continue,
                // EC2 will never take these options (e.g. the account now enforces IMDSv2):
                // retrying cannot succeed, so report it and let the policy go.
                Err(e) if e.kind == Ec2ErrorKind::Unsupported => {
                    let note = format!("node {} ({id}): cannot restore {request}: {e}", node.name);
                    publish(
                        ctx,
                        policy,
                        Some(&node.name),
                        EventType::Warning,
                        "RestoreRefused",
                        "Restore",
                        note,
                    )
                    .await;
                }
                Err(e) => {
                    remaining_errors.push(format!("{id}: {e}"));
                    continue;
                }
            }
        }
        if step.forget_original {
            match ctx.ec2.forget_original(&id).await {
                Ok(()) => ctx.cache.lock().await.clear_original(&id),
                Err(e) if e.kind == Ec2ErrorKind::NotFound => {}
                Err(e) => remaining_errors.push(format!("{id}: {e}")),
            }
        }
    }
    if !remaining_errors.is_empty() {
        let note = format!(
            "{} instances not restored yet (retrying): {}",
            remaining_errors.len(),
            remaining_errors.join("; ")
        );
        publish(ctx, policy, None, EventType::Warning, "RestoreFailed", "Restore", note).await;
        return Err(ReconcileError::RestoreIncomplete {
            policy: name,
            remaining: remaining_errors.len(),
        });
    }
    tracing::info!(policy = %name, restored, "restored original options before deletion");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpTokens, MetadataOptions, PolicyMode, Toggle};
    use crate::options::ApplyState;
    use crate::selection::tests::{hop, policy, tokens};

    fn original() -> FullOptions {
        FullOptions {
            http_tokens: HttpTokens::Optional,
            hop_limit: 1,
            http_endpoint: Toggle::Enabled,
            http_protocol_ipv6: Toggle::Disabled,
            instance_metadata_tags: Toggle::Disabled,
        }
    }

    fn observed(t: HttpTokens, h: i32) -> ObservedOptions {
        ObservedOptions {
            values: FullOptions {
                http_tokens: t,
                hop_limit: h,
                ..original()
            }
            .to_options(),
            state: ApplyState::Applied,
        }
    }

    #[test]
    fn restore_steps() {
        let other_tokens = policy("other", 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
        let audit = policy("audit", 0, PolicyMode::Audit, hop(3));
        struct Case<'a> {
            name: &'a str,
            observed: ObservedOptions,
            remaining: Vec<&'a PolicyInput>,
            want: RestoreStep,
        }
        let cases = vec![
            Case {
                name: "nothing remains: original back, tag removed",
                observed: observed(HttpTokens::Required, 2),
                remaining: vec![],
                want: RestoreStep {
                    modify: Some(original()),
                    forget_original: true,
                },
            },
            Case {
                name: "already original",
                observed: observed(HttpTokens::Optional, 1),
                remaining: vec![],
                want: RestoreStep {
                    modify: None,
                    forget_original: true,
                },
            },
            Case {
                name: "another policy still requires tokens: only the hop limit goes back",
                observed: observed(HttpTokens::Required, 2),
                remaining: vec![&other_tokens],
                want: RestoreStep {
                    modify: Some(FullOptions {
                        http_tokens: HttpTokens::Required,
                        ..original()
                    }),
                    forget_original: false,
                },
            },
            Case {
                name: "an audit policy enforces nothing",
                observed: observed(HttpTokens::Required, 2),
                remaining: vec![&audit],
                want: RestoreStep {
                    modify: Some(original()),
                    forget_original: true,
                },
            },
        ];
        for c in cases {
            assert_eq!(
                restore_step(&original(), &c.observed, &c.remaining),
                c.want,
                "{}",
                c.name
            );
        }
        let _ = MetadataOptions::default();
    }
}
