//! Planning: a pure function from (policies, nodes, observed instance options) to what each
//! selected node's state is and which modify request, if any, this policy should send.

use crate::api::{FieldDrift, GuardMode, HttpTokens, PolicyMode, Toggle};
use crate::options::{ApplyState, Field, FullOptions, ObservedOptions};
use crate::provider_id::{self, SkipReason};
use crate::selection::{self, FieldDecision, PolicyInput};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A Node, reduced to what the decisions need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInput {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.providerID`.
    pub provider_id: Option<String>,
}

/// What kind of failure an EC2 error is, which decides how it is retried and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// `UnauthorizedOperation`: reported, retried with a long backoff.
    PermissionDenied,
    /// `UnsupportedOperation`, `InvalidParameterValue`: not retried until the request changes.
    Unsupported,
    /// Throttling, 5xx, timeouts: retried with backoff.
    Transient,
    /// Anything else: retried with backoff.
    Other,
}

impl FailureKind {
    /// The CamelCase reason for status and events.
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::PermissionDenied => crate::api::reason::PERMISSION_DENIED,
            FailureKind::Unsupported => crate::api::reason::UNSUPPORTED_OPTION,
            FailureKind::Transient => "TransientError",
            FailureKind::Other => "EC2Error",
        }
    }
}

/// A failed EC2 call, as far as planning and status care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// How it is handled.
    pub kind: FailureKind,
    /// The EC2 error code and message.
    pub message: String,
}

/// What is known about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// DescribeInstances reported it.
    Found(ObservedOptions),
    /// DescribeInstances does not know it (terminated, another account or region).
    NotFound,
    /// Reading it failed.
    Failed(Failure),
}

/// Remembers modify requests that EC2 refused for good, so they are not sent again until the
/// request (the policy or the node's selection) changes.
pub trait RefusalMemo {
    /// The refusal of exactly this request for this instance, if there was one.
    fn refused(&self, instance_id: &str, request: &FullOptions) -> Option<Failure>;
}

impl RefusalMemo for HashMap<String, (FullOptions, Failure)> {
    fn refused(&self, instance_id: &str, request: &FullOptions) -> Option<Failure> {
        self.get(instance_id)
            .filter(|(refused, _)| refused == request)
            .map(|(_, failure)| failure.clone())
    }
}

/// A selected node's state with respect to one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// Failed to read or modify (listed first in status).
    Failed,
    /// Equal-priority policies disagree on an option this policy sets.
    Conflict,
    /// A guard keeps the operator from changing the instance (IMDSv1 in use, tag keys…).
    Blocked,
    /// Options differ from what the policies decide.
    Drifted,
    /// A change is in flight.
    Pending,
    /// Not an instance the operator can manage.
    Skipped,
    /// Every option this policy decides matches and is applied.
    Compliant,
}

/// The plan for one selected node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// The Node's name.
    pub node: String,
    /// The instance, when the providerID names one.
    pub instance_id: Option<String>,
    /// The node's state.
    pub state: NodeState,
    /// CamelCase reason (`Drifted`, a skip reason, a failure reason…).
    pub reason: String,
    /// Details for people.
    pub message: Option<String>,
    /// The options this policy decides that differ, observed → desired.
    pub drift: Vec<FieldDrift>,
    /// The complete request this policy should send, when it should.
    pub action: Option<FullOptions>,
    /// How a failure is handled, when `state` is `Failed`.
    pub failure: Option<FailureKind>,
    /// The IMDSv1-usage guard needs the instance's `MetadataNoToken` sum over this lookback
    /// before the request may go out.
    pub needs_imdsv1_usage: Option<Duration>,
}

impl NodePlan {
    fn new(node: &NodeInput, instance_id: Option<String>, state: NodeState, reason: &str) -> Self {
        NodePlan {
            node: node.name.clone(),
            instance_id,
            state,
            reason: reason.to_string(),
            message: None,
            drift: Vec::new(),
            action: None,
            failure: None,
            needs_imdsv1_usage: None,
        }
    }

    fn block(&mut self, reason: &str, message: String) {
        self.state = NodeState::Blocked;
        self.reason = reason.to_string();
        self.message = Some(message);
        self.action = None;
    }

    /// Marks the plan failed with `failure`.
    pub fn fail(&mut self, failure: Failure) {
        self.state = NodeState::Failed;
        self.reason = failure.kind.reason().to_string();
        self.message = Some(failure.message);
        self.failure = Some(failure.kind);
        self.action = None;
    }
}

/// What the guards know about one instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuardFacts {
    /// The instance's tag keys.
    pub tag_keys: Vec<String>,
    /// `MetadataNoToken` summed over a lookback (the key), or why it could not be read; a
    /// lookback absent here has not been read yet.
    pub imdsv1_calls: BTreeMap<Duration, Result<f64, String>>,
}

/// Guard reasons (node reasons and `Stalled` reasons).
pub mod guard_reason {
    /// The instance made IMDSv1 calls within the lookback.
    pub const IMDSV1_IN_USE: &str = "IMDSv1InUse";
    /// `MetadataNoToken` could not be read.
    pub const IMDSV1_USAGE_UNKNOWN: &str = "IMDSv1UsageUnknown";
    /// A tag key contains `/` or a space, which EC2 refuses with `instanceMetadataTags`.
    pub const TAG_KEY_NOT_ALLOWED: &str = "TagKeyNotAllowed";
}

/// Everything planning looks at.
pub struct PlanInput<'a, M: RefusalMemo> {
    /// The policy being reconciled.
    pub policy: &'a PolicyInput,
    /// Every policy (including `policy`), for priorities and conflicts.
    pub policies: &'a [PolicyInput],
    /// Observations by instance ID; an instance absent here has not been read (yet).
    pub observations: &'a HashMap<String, Observation>,
    /// Requests EC2 refused for good.
    pub refusals: &'a M,
    /// Guard facts by instance ID.
    pub guard_facts: &'a HashMap<String, GuardFacts>,
}

/// Plans every node `input.policy` selects; nodes it does not select are ignored.
pub fn plan<'n, M: RefusalMemo>(
    input: &PlanInput<'_, M>,
    nodes: impl IntoIterator<Item = &'n NodeInput>,
) -> Vec<NodePlan> {
    let mut plans: Vec<NodePlan> = nodes
        .into_iter()
        .filter(|node| input.policy.selects(&node.labels))
        .map(|node| plan_node(input, node))
        .collect();
    plans.sort_by(|a, b| a.node.cmp(&b.node));
    plans
}

fn plan_node<M: RefusalMemo>(input: &PlanInput<'_, M>, node: &NodeInput) -> NodePlan {
    let instance = match provider_id::parse(node.provider_id.as_deref()) {
        Ok(instance) => instance,
        Err(skip) => return skipped(node, None, skip),
    };
    let id = instance.instance_id;
    let observed = match input.observations.get(&id) {
        Some(Observation::Found(observed)) => observed,
        Some(Observation::NotFound) => {
            let skip = SkipReason::InstanceNotFound(id.clone());
            return skipped(node, Some(id), skip);
        }
        Some(Observation::Failed(failure)) => {
            let mut plan = NodePlan::new(node, Some(id), NodeState::Failed, "");
            plan.fail(failure.clone());
            return plan;
        }
        None => {
            let mut plan = NodePlan::new(node, Some(id), NodeState::Pending, "NotObservedYet");
            plan.message = Some("the instance's options have not been read yet".into());
            return plan;
        }
    };

    let selecting = input.policies.iter().filter(|p| p.selects(&node.labels));
    let decisions = selection::decide(selecting);
    let me = &input.policy.name;

    let mut drift = Vec::new();
    let mut conflicts = Vec::new();
    let mut enforced_drift_mine = false;
    for (field, decision) in decisions.iter().filter(|(_, d)| d.involves(me)) {
        match decision {
            FieldDecision::Decided { value, enforced, .. } => {
                let seen = observed.values.get(*field);
                if seen != Some(*value) {
                    drift.push(FieldDrift {
                        field: field.name().to_string(),
                        observed: seen.map_or_else(|| "unset".to_string(), |v| v.to_string()),
                        desired: value.to_string(),
                    });
                    enforced_drift_mine |= *enforced;
                }
            }
            FieldDecision::Conflict { claims } => {
                let who: Vec<String> = claims.iter().map(|(p, v)| format!("{p} wants {v}")).collect();
                conflicts.push(format!("{}: {}", field, who.join(", ")));
            }
        }
    }

    let mut plan = NodePlan::new(
        node,
        Some(id.clone()),
        NodeState::Compliant,
        crate::api::reason::COMPLIANT,
    );
    plan.drift = drift;
    if observed.state == ApplyState::Pending {
        plan.state = NodeState::Pending;
        plan.reason = crate::api::reason::PENDING.into();
        plan.message = Some("EC2 reports the last change as pending".into());
        return plan;
    }
    if !plan.drift.is_empty() {
        plan.state = NodeState::Drifted;
        plan.reason = crate::api::reason::DRIFTED.into();
        // Only an enforcing policy sends: an Audit policy that shares an option with an
        // Enforce policy leaves the request to that one (and to its rollout and guards).
        if enforced_drift_mine && input.policy.mode == PolicyMode::Enforce {
            let request = FullOptions::merge(&selection::enforced_options(&decisions), &observed.values);
            let unchanged = FullOptions::merge(&Default::default(), &observed.values);
            if request != unchanged || !complete(observed) {
                match input.refusals.refused(&id, &request) {
                    Some(failure) => plan.fail(failure),
                    None => {
                        plan.action = Some(request);
                        apply_guards(input, &decisions, observed, &id, &mut plan);
                    }
                }
            }
        } else if input.policy.mode == PolicyMode::Audit {
            plan.message = Some("Audit mode: not modified".into());
        }
    }
    if !conflicts.is_empty() && plan.state != NodeState::Failed {
        plan.state = NodeState::Conflict;
        plan.reason = crate::api::reason::CONFLICT.into();
        plan.message = Some(format!("left alone: {}", conflicts.join("; ")));
    }
    plan
}

/// Checks a planned request against the guards; blocks it, or adds a warning, or asks for the
/// IMDSv1 usage first.
fn apply_guards<M: RefusalMemo>(
    input: &PlanInput<'_, M>,
    decisions: &selection::Decisions,
    observed: &ObservedOptions,
    id: &str,
    plan: &mut NodePlan,
) {
    let Some(request) = plan.action else { return };
    let facts = input.guard_facts.get(id).cloned().unwrap_or_default();

    if request.instance_metadata_tags == Toggle::Enabled
        && observed.values.instance_metadata_tags != Some(Toggle::Enabled)
        && let Some(key) = facts.tag_keys.iter().find(|k| k.contains('/') || k.contains(' '))
    {
        plan.block(
            guard_reason::TAG_KEY_NOT_ALLOWED,
            format!(
                "EC2 refuses instanceMetadataTags: enabled on instances with a tag key containing '/' or a space; this instance has {key:?}"
            ),
        );
        return;
    }

    if request.http_tokens == HttpTokens::Required && observed.values.http_tokens != Some(HttpTokens::Required) {
        let (mode, lookback) = imdsv1_guard(input, decisions);
        if mode == GuardMode::Off {
            return;
        }
        let hours = lookback.as_secs_f64() / 3600.0;
        match facts.imdsv1_calls.get(&lookback).cloned() {
            None => {
                plan.needs_imdsv1_usage = Some(lookback);
                plan.action = None;
                plan.message = Some("reading IMDSv1 usage (MetadataNoToken) first".into());
            }
            Some(Ok(calls)) if calls > 0.0 => {
                let message = format!(
                    "{calls} IMDSv1 calls (CloudWatch MetadataNoToken) in the last {hours}h; move those callers to IMDSv2 first"
                );
                if mode == GuardMode::Block {
                    plan.block(guard_reason::IMDSV1_IN_USE, message);
                } else {
                    plan.message = Some(format!("warning: {message}"));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                if mode == GuardMode::Block {
                    plan.block(
                        guard_reason::IMDSV1_USAGE_UNKNOWN,
                        format!("cannot read MetadataNoToken: {error}"),
                    );
                } else {
                    plan.message = Some(format!("warning: cannot read MetadataNoToken: {error}"));
                }
            }
        }
    }
}

/// The IMDSv1 guard that applies to the `httpTokens` decision: the strictest mode among the
/// policies that own it, and the longest lookback among those that check.
fn imdsv1_guard<M: RefusalMemo>(input: &PlanInput<'_, M>, decisions: &selection::Decisions) -> (GuardMode, Duration) {
    let owners: Vec<&PolicyInput> = match decisions.get(&Field::HttpTokens) {
        Some(FieldDecision::Decided { owners, .. }) => {
            input.policies.iter().filter(|p| owners.contains(&p.name)).collect()
        }
        _ => Vec::new(),
    };
    let rank = |m: GuardMode| match m {
        GuardMode::Block => 2,
        GuardMode::Warn => 1,
        GuardMode::Off => 0,
    };
    let mode = owners
        .iter()
        .map(|p| p.guards.imdsv1_usage.mode)
        .max_by_key(|m| rank(*m))
        .unwrap_or(GuardMode::Off);
    let lookback = owners
        .iter()
        .filter(|p| p.guards.imdsv1_usage.mode != GuardMode::Off)
        .map(|p| parse_lookback(&p.guards.imdsv1_usage.lookback))
        .max()
        .unwrap_or(Duration::from_secs(24 * 3600));
    (mode, lookback)
}

/// A lookback such as `24h`; the default (24h) when it cannot be parsed.
pub fn parse_lookback(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or(Duration::from_secs(24 * 3600))
}

fn complete(observed: &ObservedOptions) -> bool {
    Field::ALL.iter().all(|f| observed.values.get(*f).is_some())
}

fn skipped(node: &NodeInput, instance_id: Option<String>, skip: SkipReason) -> NodePlan {
    let mut plan = NodePlan::new(node, instance_id, NodeState::Skipped, skip.reason());
    plan.message = Some(skip.to_string());
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpTokens, MetadataOptions, Toggle};
    use crate::selection::tests::{hop, policy, tokens};

    const ID: &str = "i-0123456789abcdef0";

    fn node(name: &str, provider_id: Option<&str>) -> NodeInput {
        NodeInput {
            name: name.into(),
            labels: BTreeMap::new(),
            provider_id: provider_id.map(String::from),
        }
    }

    fn ec2_node() -> NodeInput {
        node("n1", Some(&format!("aws:///us-east-1a/{ID}")))
    }

    fn observed(tokens: HttpTokens, hop: i32, state: ApplyState) -> Observation {
        Observation::Found(ObservedOptions {
            values: MetadataOptions {
                http_tokens: Some(tokens),
                http_put_response_hop_limit: Some(hop),
                http_endpoint: Some(Toggle::Enabled),
                http_protocol_ipv6: Some(Toggle::Disabled),
                instance_metadata_tags: Some(Toggle::Disabled),
            },
            state,
        })
    }

    fn v2_hop2() -> MetadataOptions {
        MetadataOptions {
            http_tokens: Some(HttpTokens::Required),
            http_put_response_hop_limit: Some(2),
            ..Default::default()
        }
    }

    fn full(tokens: HttpTokens, hop: i32) -> FullOptions {
        FullOptions {
            http_tokens: tokens,
            hop_limit: hop,
            http_endpoint: Toggle::Enabled,
            http_protocol_ipv6: Toggle::Disabled,
            instance_metadata_tags: Toggle::Disabled,
        }
    }

    struct Case {
        name: &'static str,
        policies: Vec<PolicyInput>,
        node: NodeInput,
        observation: Option<Observation>,
        refusals: HashMap<String, (FullOptions, Failure)>,
        want_state: NodeState,
        want_reason: &'static str,
        want_action: Option<FullOptions>,
        want_drift: usize,
    }

    fn case(name: &'static str) -> Case {
        Case {
            name,
            policies: vec![policy("p", 0, PolicyMode::Enforce, v2_hop2())],
            node: ec2_node(),
            observation: Some(observed(HttpTokens::Optional, 1, ApplyState::Applied)),
            refusals: HashMap::new(),
            want_state: NodeState::Drifted,
            want_reason: "Drifted",
            want_action: Some(full(HttpTokens::Required, 2)),
            want_drift: 2,
        }
    }

    #[test]
    fn node_plans() {
        use PolicyMode::*;
        let unsupported = Failure {
            kind: FailureKind::Unsupported,
            message: "UnsupportedOperation: nope".into(),
        };
        let cases = vec![
            case("drifted instance gets a full request"),
            Case {
                observation: Some(observed(HttpTokens::Required, 2, ApplyState::Applied)),
                want_state: NodeState::Compliant,
                want_reason: "Compliant",
                want_action: None,
                want_drift: 0,
                ..case("matching instance: no request")
            },
            Case {
                observation: Some(observed(HttpTokens::Required, 2, ApplyState::Pending)),
                want_state: NodeState::Pending,
                want_reason: "Pending",
                want_action: None,
                want_drift: 0,
                ..case("pending and matching")
            },
            Case {
                observation: Some(observed(HttpTokens::Optional, 1, ApplyState::Pending)),
                want_state: NodeState::Pending,
                want_reason: "Pending",
                want_action: None,
                want_drift: 2,
                ..case("pending and drifted: never re-sent while pending")
            },
            Case {
                policies: vec![policy("p", 0, Audit, v2_hop2())],
                want_action: None,
                ..case("audit mode reports drift, no request")
            },
            Case {
                node: node("n1", None),
                observation: None,
                want_state: NodeState::Skipped,
                want_reason: "NoProviderID",
                want_action: None,
                want_drift: 0,
                ..case("no providerID yet")
            },
            Case {
                node: node("n1", Some("aws:///us-east-1a/abc/fargate-ip-1")),
                observation: None,
                want_state: NodeState::Skipped,
                want_reason: "Fargate",
                want_action: None,
                want_drift: 0,
                ..case("fargate")
            },
            Case {
                observation: Some(Observation::NotFound),
                want_state: NodeState::Skipped,
                want_reason: "InstanceNotFound",
                want_action: None,
                want_drift: 0,
                ..case("terminated instance")
            },
            Case {
                observation: None,
                want_state: NodeState::Pending,
                want_reason: "NotObservedYet",
                want_action: None,
                want_drift: 0,
                ..case("not read yet")
            },
            Case {
                observation: Some(Observation::Failed(Failure {
                    kind: FailureKind::Transient,
                    message: "RequestLimitExceeded".into(),
                })),
                want_state: NodeState::Failed,
                want_reason: "TransientError",
                want_action: None,
                want_drift: 0,
                ..case("describe failed")
            },
            Case {
                refusals: [(ID.to_string(), (full(HttpTokens::Required, 2), unsupported.clone()))].into(),
                want_state: NodeState::Failed,
                want_reason: "UnsupportedOption",
                want_action: None,
                ..case("refused request is not re-sent")
            },
            Case {
                refusals: [(ID.to_string(), (full(HttpTokens::Required, 3), unsupported.clone()))].into(),
                ..case("a different request is sent again")
            },
            Case {
                policies: vec![
                    policy("p", 0, Enforce, tokens(HttpTokens::Required)),
                    policy("q", 0, Enforce, hop(2)),
                ],
                want_action: Some(full(HttpTokens::Required, 2)),
                want_drift: 1,
                ..case("request carries other policies' enforced options")
            },
            Case {
                policies: vec![policy("p", 0, Enforce, hop(3)), policy("q", 0, Enforce, hop(2))],
                want_state: NodeState::Conflict,
                want_reason: "Conflict",
                want_action: None,
                want_drift: 0,
                ..case("conflict: option left alone")
            },
            Case {
                policies: vec![policy("p", 0, Enforce, v2_hop2()), policy("q", 0, Enforce, hop(3))],
                want_state: NodeState::Conflict,
                want_reason: "Conflict",
                want_action: Some(full(HttpTokens::Required, 1)),
                want_drift: 1,
                ..case("conflict on one option, the others still fixed")
            },
            Case {
                policies: vec![policy("p", 0, Audit, v2_hop2()), policy("q", 0, Enforce, v2_hop2())],
                want_action: None,
                ..case("an audit policy sharing an option with an enforcing one never sends")
            },
            Case {
                policies: vec![policy("p", 0, Enforce, hop(1)), policy("q", 9, Enforce, hop(2))],
                want_state: NodeState::Compliant,
                want_reason: "Compliant",
                want_action: None,
                want_drift: 0,
                ..case("overridden option is not this policy's drift")
            },
        ];
        for c in cases {
            let observations: HashMap<String, Observation> =
                c.observation.into_iter().map(|o| (ID.to_string(), o)).collect();
            let input = PlanInput {
                policy: &c.policies[0],
                policies: &c.policies,
                observations: &observations,
                refusals: &c.refusals,
                guard_facts: &HashMap::new(),
            };
            let plans = plan(&input, [&c.node]);
            assert_eq!(plans.len(), 1, "{}", c.name);
            let p = &plans[0];
            assert_eq!(p.state, c.want_state, "{}: state", c.name);
            assert_eq!(p.reason, c.want_reason, "{}: reason", c.name);
            assert_eq!(p.action, c.want_action, "{}: action", c.name);
            assert_eq!(p.drift.len(), c.want_drift, "{}: drift {:?}", c.name, p.drift);
        }
    }

    #[test]
    fn drift_lists_observed_and_desired() {
        let policies = vec![policy("p", 0, PolicyMode::Enforce, v2_hop2())];
        let observations: HashMap<String, Observation> =
            [(ID.to_string(), observed(HttpTokens::Optional, 1, ApplyState::Applied))].into();
        let refusals = HashMap::new();
        let input = PlanInput {
            policy: &policies[0],
            policies: &policies,
            observations: &observations,
            refusals: &refusals,
            guard_facts: &HashMap::new(),
        };
        let plans = plan(&input, [&ec2_node()]);
        let drift: Vec<(&str, &str, &str)> = plans[0]
            .drift
            .iter()
            .map(|d| (d.field.as_str(), d.observed.as_str(), d.desired.as_str()))
            .collect();
        assert_eq!(
            drift,
            vec![
                ("httpTokens", "optional", "required"),
                ("httpPutResponseHopLimit", "1", "2")
            ]
        );
    }

    #[test]
    fn unselected_nodes_are_ignored_and_order_is_stable() {
        let mut p = policy("p", 0, PolicyMode::Enforce, v2_hop2());
        p.selector = [("pool", "a")].into_iter().collect();
        let policies = vec![p];
        let mut a2 = node("b-node", None);
        a2.labels.insert("pool".into(), "a".into());
        let mut a1 = node("a-node", None);
        a1.labels.insert("pool".into(), "a".into());
        let other = node("c-node", None);
        let observations = HashMap::new();
        let refusals = HashMap::new();
        let input = PlanInput {
            policy: &policies[0],
            policies: &policies,
            observations: &observations,
            refusals: &refusals,
            guard_facts: &HashMap::new(),
        };
        let names: Vec<String> = plan(&input, [&a2, &other, &a1]).into_iter().map(|p| p.node).collect();
        assert_eq!(names, vec!["a-node", "b-node"]);
    }

    #[test]
    fn incomplete_observation_is_completed_by_the_request() {
        // moto drops fields after a partial modify; a field the policy does not set is filled
        // with EC2's default rather than left out of the request.
        let policies = vec![policy("p", 0, PolicyMode::Enforce, tokens(HttpTokens::Required))];
        let observations: HashMap<String, Observation> = [(
            ID.to_string(),
            Observation::Found(ObservedOptions {
                values: MetadataOptions {
                    http_tokens: Some(HttpTokens::Optional),
                    ..Default::default()
                },
                state: ApplyState::Applied,
            }),
        )]
        .into();
        let refusals = HashMap::new();
        let input = PlanInput {
            policy: &policies[0],
            policies: &policies,
            observations: &observations,
            refusals: &refusals,
            guard_facts: &HashMap::new(),
        };
        let plans = plan(&input, [&ec2_node()]);
        assert_eq!(plans[0].action, Some(full(HttpTokens::Required, 1)));
    }
}
