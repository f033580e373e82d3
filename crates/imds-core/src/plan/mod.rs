//! Planning: a pure function from (policies, nodes, observed instance options) to what each
//! selected node's state is and which modify request, if any, this policy should send.

pub mod guards;

use crate::api::{FieldDrift, PolicyMode};
use crate::observation::{Failure, FailureKind, NodeInput, Observation, ObservationSource, RefusalMemo};
use crate::options::{ApplyState, Field, FullOptions, ObservedOptions};
use crate::provider_id::{self, SkipReason};
use crate::reason::Reason;
use crate::selection::{self, FieldDecision, PolicyInput};
use guards::{GuardFactsSource, GuardVerdict, GuardWarning};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

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

impl NodeState {
    /// The state's name, as `imds-operator report` and policy reports write it.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Failed => "Failed",
            NodeState::Conflict => "Conflict",
            NodeState::Blocked => "Blocked",
            NodeState::Drifted => "Drifted",
            NodeState::Pending => "Pending",
            NodeState::Skipped => "Skipped",
            NodeState::Compliant => "Compliant",
        }
    }
}

/// `option: observed → desired`, as `imds-operator report` and policy reports write a drift.
impl std::fmt::Display for FieldDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.observed, self.desired)
    }
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
    /// Why the node is in its state (`Drifted`, a skip reason, a failure reason…).
    pub reason: Reason,
    /// Details for people.
    pub message: Option<String>,
    /// A guard's objection that did not stop the request (`imdsv1Usage: Warn`).
    pub warning: Option<GuardWarning>,
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
    pub(crate) fn new(node: &NodeInput, instance_id: Option<String>, state: NodeState, reason: Reason) -> Self {
        NodePlan {
            node: node.name.clone(),
            instance_id,
            state,
            reason,
            message: None,
            warning: None,
            drift: Vec::new(),
            action: None,
            failure: None,
            needs_imdsv1_usage: None,
        }
    }

    fn block(&mut self, reason: Reason, message: String) {
        self.state = NodeState::Blocked;
        self.reason = reason;
        self.message = Some(message);
        self.warning = None;
        self.action = None;
    }

    /// The message reported for the node: the details, then a guard's warning.
    pub fn report_message(&self) -> Option<String> {
        match (&self.message, &self.warning) {
            (Some(message), Some(warning)) => Some(format!("{message}; {warning}")),
            (None, Some(warning)) => Some(warning.to_string()),
            (message, None) => message.clone(),
        }
    }

    /// What keeps the node from complying, `reason: message`, when something does (not for a
    /// compliant node, nor for a drifted one that only waits for its request).
    pub fn blocker(&self) -> Option<String> {
        if matches!(self.state, NodeState::Compliant | NodeState::Drifted) {
            return None;
        }
        Some(format!(
            "{}: {}",
            self.reason,
            self.report_message().unwrap_or_default()
        ))
    }

    /// Marks a plan whose request was not sent in this reconcile as waiting (for the rollout,
    /// the rate limit or a halt); a guard's warning stays visible beside it.
    pub fn mark_waiting(&mut self, halted: bool, max_in_flight: usize) {
        self.message = Some(if halted {
            "rollout halted".to_string()
        } else {
            format!("waiting for the rollout (maxInFlight {max_in_flight}) or the EC2 rate limit")
        });
    }

    /// Marks the plan failed with `failure`.
    pub fn fail(&mut self, failure: Failure) {
        self.state = NodeState::Failed;
        self.reason = failure.kind.reason();
        self.message = Some(failure.message);
        self.warning = None;
        self.failure = Some(failure.kind);
        self.action = None;
    }
}

/// Everything planning looks at.
pub struct PlanInput<'a, M: RefusalMemo> {
    /// The policy being reconciled.
    pub policy: &'a PolicyInput,
    /// Every policy (including `policy`), for priorities and conflicts.
    pub policies: &'a [PolicyInput],
    /// Observations by instance ID; an instance absent here has not been read (yet).
    pub observations: &'a dyn ObservationSource,
    /// Requests EC2 refused for good.
    pub refusals: &'a M,
    /// Guard facts by instance ID (read only for instances planned a request).
    pub guard_facts: &'a dyn GuardFactsSource,
}

/// The instances whose plans wait for their IMDSv1 usage, by lookback.
pub fn usage_wanted<'a>(plans: impl IntoIterator<Item = &'a NodePlan>) -> BTreeMap<Duration, Vec<String>> {
    let mut wanted: BTreeMap<Duration, Vec<String>> = BTreeMap::new();
    for p in plans {
        if let (Some(lookback), Some(id)) = (p.needs_imdsv1_usage, p.instance_id.as_ref()) {
            wanted.entry(lookback).or_default().push(id.clone());
        }
    }
    wanted
}

/// Plans every node `input.policy` selects; nodes it does not select are ignored.
pub fn plan<'n, M: RefusalMemo>(
    input: &PlanInput<'_, M>,
    nodes: impl IntoIterator<Item = &'n NodeInput>,
) -> Vec<NodePlan> {
    let mut decided = DecisionsBySelection::default();
    // Sorted by node name before planning (references move cheaply; plans do not): the plans
    // come out in the order a sort of them would give.
    let mut selected: Vec<&NodeInput> = nodes
        .into_iter()
        .filter(|node| input.policy.selects(&node.labels))
        .collect();
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    selected
        .into_iter()
        .map(|node| plan_node(input, node, &mut decided))
        .collect()
}

/// The decisions for each set of selecting policies (by index), computed once per set: the
/// nodes of a node group share one, and a fleet has a handful of sets, not one per node.
type DecisionsBySelection = HashMap<Vec<usize>, selection::Decisions>;

/// The decisions of the policies that select `node`.
fn decisions_for<'d, M: RefusalMemo>(
    input: &PlanInput<'_, M>,
    node: &NodeInput,
    decided: &'d mut DecisionsBySelection,
) -> &'d selection::Decisions {
    let selecting: Vec<usize> = (0..input.policies.len())
        .filter(|&i| input.policies[i].selects(&node.labels))
        .collect();
    decided
        .entry(selecting)
        .or_insert_with_key(|selecting| selection::decide(selecting.iter().map(|&i| &input.policies[i])))
}

fn plan_node<M: RefusalMemo>(
    input: &PlanInput<'_, M>,
    node: &NodeInput,
    decided: &mut DecisionsBySelection,
) -> NodePlan {
    let instance = match provider_id::parse(node.provider_id.as_deref()) {
        Ok(instance) => instance,
        Err(skip) => return skipped(node, None, skip),
    };
    let id = instance.instance_id;
    let observed = match input.observations.observation(&id) {
        Some(Observation::Found(observed)) => observed,
        Some(Observation::NotFound) => {
            let skip = SkipReason::InstanceNotFound(id.clone());
            return skipped(node, Some(id), skip);
        }
        Some(Observation::Failed(failure)) => {
            let mut plan = NodePlan::new(node, Some(id), NodeState::Failed, Reason::Failed);
            plan.fail(failure.clone());
            return plan;
        }
        None => {
            let mut plan = NodePlan::new(node, Some(id), NodeState::Pending, Reason::NotObservedYet);
            plan.message = Some("the instance's options have not been read yet".into());
            return plan;
        }
    };

    let decisions = decisions_for(input, node, decided);
    let Comparison {
        drift,
        conflicts,
        enforced_drift_mine,
    } = compare(decisions, &input.policy.name, observed);

    let mut plan = NodePlan::new(node, Some(id.clone()), NodeState::Compliant, Reason::Compliant);
    plan.drift = drift;
    if observed.state == ApplyState::Pending {
        plan.state = NodeState::Pending;
        plan.reason = Reason::Pending;
        plan.message = Some("EC2 reports the last change as pending".into());
        return plan;
    }
    if !plan.drift.is_empty() {
        plan.state = NodeState::Drifted;
        plan.reason = Reason::Drifted;
        // Only an enforcing policy sends: an Audit policy that shares an option with an
        // Enforce policy leaves the request to that one (and to its rollout and guards).
        if enforced_drift_mine && input.policy.mode == PolicyMode::Enforce {
            let request = FullOptions::merge(&selection::enforced_options(decisions), &observed.values);
            let unchanged = FullOptions::completed(&observed.values);
            if request != unchanged || !complete(observed) {
                match input.refusals.refused(&id, &request) {
                    Some(failure) => plan.fail(failure),
                    None => {
                        plan.action = Some(request);
                        guard(input, decisions, observed, &id, &mut plan);
                    }
                }
            }
        } else if input.policy.mode == PolicyMode::Audit {
            plan.message = Some("Audit mode: not modified".into());
        }
    }
    if !conflicts.is_empty() && plan.state != NodeState::Failed {
        plan.state = NodeState::Conflict;
        plan.reason = Reason::Conflict;
        plan.message = Some(format!("left alone: {}", conflicts.join("; ")));
        plan.warning = None;
    }
    plan
}

/// How the observed options compare with the decisions this policy takes part in.
struct Comparison {
    /// The options that differ, observed → desired.
    drift: Vec<FieldDrift>,
    /// The options equal-priority policies disagree on, for people.
    conflicts: Vec<String>,
    /// Some drifted option is decided by an enforcing policy.
    enforced_drift_mine: bool,
}

fn compare(decisions: &selection::Decisions, me: &str, observed: &ObservedOptions) -> Comparison {
    let mut out = Comparison {
        drift: Vec::new(),
        conflicts: Vec::new(),
        enforced_drift_mine: false,
    };
    for (field, decision) in decisions.iter().filter(|(_, d)| d.involves(me)) {
        match decision {
            FieldDecision::Decided { value, enforced, .. } => {
                let seen = observed.values.get(*field);
                if seen != Some(*value) {
                    out.drift.push(FieldDrift {
                        field: field.name().to_string(),
                        observed: seen.map_or_else(|| "unset".to_string(), |v| v.to_string()),
                        desired: value.to_string(),
                    });
                    out.enforced_drift_mine |= *enforced;
                }
            }
            FieldDecision::Conflict { claims } => {
                let who: Vec<String> = claims.iter().map(|(p, v)| format!("{p} wants {v}")).collect();
                out.conflicts.push(format!("{}: {}", field, who.join(", ")));
            }
        }
    }
    out
}

/// Checks the planned request against the guards of the policies that own its decisions;
/// blocks it, adds a warning, or asks for the IMDSv1 usage first.
fn guard<M: RefusalMemo>(
    input: &PlanInput<'_, M>,
    decisions: &selection::Decisions,
    observed: &ObservedOptions,
    id: &str,
    plan: &mut NodePlan,
) {
    let Some(request) = plan.action else { return };
    let owners: Vec<&PolicyInput> = match decisions.get(&Field::HttpTokens) {
        Some(FieldDecision::Decided { owners, .. }) => {
            input.policies.iter().filter(|p| owners.contains(&p.name)).collect()
        }
        _ => Vec::new(),
    };
    let imdsv1 = guards::imdsv1_guard(owners);
    let facts = input.guard_facts.facts_of(id);
    match guards::check(&request, observed, imdsv1, &facts) {
        GuardVerdict::Allow => {}
        GuardVerdict::Warn(warning) => plan.warning = Some(warning),
        GuardVerdict::Block { reason, message } => plan.block(reason, message),
        GuardVerdict::NeedsUsage(lookback) => {
            plan.needs_imdsv1_usage = Some(lookback);
            plan.action = None;
            plan.message = Some("reading IMDSv1 usage (MetadataNoToken) first".into());
        }
    }
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
pub(crate) mod tests {
    use super::*;
    use crate::api::{HttpTokens, MetadataOptions, Toggle};
    use crate::fixtures::{hop, policy, tokens};
    use crate::plan::guards::GuardFacts;
    use crate::usage::UsageSeries;

    const ID: &str = "i-0123456789abcdef0";

    /// A plan in `state` for node `name`, for tests of what reads plans.
    pub(crate) fn fixture(name: &str, state: NodeState) -> NodePlan {
        NodePlan::new(&node(name, None), Some(format!("i-{name}")), state, Reason::Compliant)
    }

    fn node(name: &str, provider_id: Option<&str>) -> NodeInput {
        NodeInput {
            name: name.into(),
            labels: Default::default(),
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
                guard_facts: &guards::NoGuardFacts,
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
            guard_facts: &guards::NoGuardFacts,
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
        a2.labels.insert("pool", "a");
        let mut a1 = node("a-node", None);
        a1.labels.insert("pool", "a");
        let other = node("c-node", None);
        let observations = HashMap::new();
        let refusals = HashMap::new();
        let input = PlanInput {
            policy: &policies[0],
            policies: &policies,
            observations: &observations,
            refusals: &refusals,
            guard_facts: &guards::NoGuardFacts,
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
            guard_facts: &guards::NoGuardFacts,
        };
        let plans = plan(&input, [&ec2_node()]);
        assert_eq!(plans[0].action, Some(full(HttpTokens::Required, 1)));
    }

    fn guarded(mut p: PolicyInput, mode: crate::api::GuardMode, lookback: &str) -> PolicyInput {
        p.guards.imdsv1_usage.mode = mode;
        p.guards.imdsv1_usage.lookback = lookback.into();
        p
    }

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    fn calls(lookbacks: &[(u64, Result<f64, Failure>)]) -> GuardFacts {
        GuardFacts {
            tag_keys: Vec::new(),
            imdsv1_calls: lookbacks
                .iter()
                .map(|(h, c)| (hours(*h), c.clone().map(|c| UsageSeries::single(300, 0, c))))
                .collect(),
            launched: None,
        }
    }

    /// What the guards change in a plan.
    #[derive(Debug, PartialEq)]
    struct Guarded {
        state: NodeState,
        reason: Reason,
        action: Option<FullOptions>,
        message: Option<String>,
        warning: Option<String>,
        needs_imdsv1_usage: Option<Duration>,
    }

    #[test]
    fn guards_in_plans() {
        use crate::api::GuardMode::{Block, Off, Warn};
        use PolicyMode::*;
        const IN_USE: &str =
            "3 IMDSv1 calls (CloudWatch MetadataNoToken) in the last 24h; move those callers to IMDSv2 first";
        const READING: &str = "reading IMDSv1 usage (MetadataNoToken) first";
        let unreadable = Err(Failure {
            kind: FailureKind::PermissionDenied,
            message: "AccessDenied".into(),
        });
        struct Case {
            name: &'static str,
            policies: Vec<PolicyInput>,
            observation: Observation,
            facts: GuardFacts,
            want: Guarded,
        }
        let v1 = observed(HttpTokens::Optional, 1, ApplyState::Applied);
        let sent = |action: FullOptions, warning: Option<&str>| Guarded {
            state: NodeState::Drifted,
            reason: Reason::Drifted,
            action: Some(action),
            message: None,
            warning: warning.map(String::from),
            needs_imdsv1_usage: None,
        };
        let blocked = |reason: Reason, message: &str| Guarded {
            state: NodeState::Blocked,
            reason,
            action: None,
            message: Some(message.into()),
            warning: None,
            needs_imdsv1_usage: None,
        };
        let needs = |lookback: Duration| Guarded {
            state: NodeState::Drifted,
            reason: Reason::Drifted,
            action: None,
            message: Some(READING.into()),
            warning: None,
            needs_imdsv1_usage: Some(lookback),
        };
        let warn_in_use = format!("warning: {IN_USE}");
        let cases = vec![
            Case {
                name: "warn: the request goes out with a warning",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Warn, "24h")],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: sent(full(HttpTokens::Required, 2), Some(&warn_in_use)),
            },
            Case {
                name: "warn: usage unreadable is a warning",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Warn, "24h")],
                observation: v1.clone(),
                facts: calls(&[(24, unreadable.clone())]),
                want: sent(
                    full(HttpTokens::Required, 2),
                    Some("warning: cannot read MetadataNoToken: AccessDenied"),
                ),
            },
            Case {
                name: "block: IMDSv1 in use",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Block, "24h")],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: blocked(Reason::Imdsv1InUse, IN_USE),
            },
            Case {
                name: "block: usage unreadable",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Block, "24h")],
                observation: v1.clone(),
                facts: calls(&[(24, unreadable.clone())]),
                want: blocked(Reason::Imdsv1UsageUnknown, "cannot read MetadataNoToken: AccessDenied"),
            },
            Case {
                name: "block: no IMDSv1 calls, the request goes out",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Block, "24h")],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(0.0))]),
                want: sent(full(HttpTokens::Required, 2), None),
            },
            Case {
                name: "usage not read yet: no request, the lookback is wanted",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Block, "24h")],
                observation: v1.clone(),
                facts: GuardFacts::default(),
                want: needs(hours(24)),
            },
            Case {
                name: "usage read for another lookback only",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Warn, "72h")],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(0.0))]),
                want: needs(hours(72)),
            },
            Case {
                name: "already required: no usage needed",
                policies: vec![guarded(policy("p", 0, Enforce, v2_hop2()), Block, "24h")],
                observation: observed(HttpTokens::Required, 1, ApplyState::Applied),
                facts: GuardFacts::default(),
                want: sent(full(HttpTokens::Required, 2), None),
            },
            Case {
                name: "guard off: calls do not matter",
                policies: vec![policy("p", 0, Enforce, v2_hop2())],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: sent(full(HttpTokens::Required, 2), None),
            },
            Case {
                name: "a higher-priority owner of httpTokens with the guard off: no guard",
                policies: vec![
                    guarded(policy("p", 0, Enforce, v2_hop2()), Block, "24h"),
                    guarded(policy("q", 10, Enforce, tokens(HttpTokens::Required)), Off, "24h"),
                ],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: sent(full(HttpTokens::Required, 2), None),
            },
            Case {
                name: "a higher-priority owner of httpTokens that blocks: its guard applies",
                policies: vec![
                    policy("p", 0, Enforce, v2_hop2()),
                    guarded(policy("q", 10, Enforce, tokens(HttpTokens::Required)), Block, "24h"),
                ],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: blocked(Reason::Imdsv1InUse, IN_USE),
            },
            Case {
                name: "a policy that does not set httpTokens: the owner's guard still applies",
                policies: vec![
                    policy("p", 0, Enforce, hop(2)),
                    guarded(policy("q", 0, Enforce, tokens(HttpTokens::Required)), Warn, "24h"),
                ],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: sent(full(HttpTokens::Required, 2), Some(&warn_in_use)),
            },
            Case {
                name: "equal-priority owners: the strictest mode",
                policies: vec![
                    guarded(policy("p", 0, Enforce, v2_hop2()), Warn, "24h"),
                    guarded(policy("q", 0, Enforce, tokens(HttpTokens::Required)), Block, "24h"),
                ],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: blocked(Reason::Imdsv1InUse, IN_USE),
            },
            Case {
                name: "equal-priority owners: the longest lookback",
                policies: vec![
                    guarded(policy("p", 0, Enforce, v2_hop2()), Block, "24h"),
                    guarded(policy("q", 0, Enforce, tokens(HttpTokens::Required)), Warn, "72h"),
                ],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(0.0))]),
                want: needs(hours(72)),
            },
            Case {
                name: "a lower-priority policy's guard does not count",
                policies: vec![
                    policy("p", 10, Enforce, v2_hop2()),
                    guarded(policy("q", 0, Enforce, tokens(HttpTokens::Required)), Block, "24h"),
                ],
                observation: v1.clone(),
                facts: calls(&[(24, Ok(3.0))]),
                want: sent(full(HttpTokens::Required, 2), None),
            },
            Case {
                name: "tag-key guard applies with the usage guard off",
                policies: vec![policy(
                    "p",
                    0,
                    Enforce,
                    MetadataOptions {
                        instance_metadata_tags: Some(Toggle::Enabled),
                        ..Default::default()
                    },
                )],
                observation: v1.clone(),
                facts: GuardFacts {
                    tag_keys: vec!["Name".into(), "team/owner".into()],
                    imdsv1_calls: BTreeMap::new(),
                    launched: None,
                },
                want: blocked(
                    Reason::TagKeyNotAllowed,
                    "EC2 refuses instanceMetadataTags: enabled on instances with a tag key containing '/' or a space; this instance has \"team/owner\"",
                ),
            },
        ];
        for Case {
            name,
            policies,
            observation,
            facts,
            want,
        } in cases
        {
            let observations: HashMap<String, Observation> = [(ID.to_string(), observation)].into();
            let guard_facts: HashMap<String, GuardFacts> = [(ID.to_string(), facts)].into();
            let refusals = HashMap::new();
            let input = PlanInput {
                policy: &policies[0],
                policies: &policies,
                observations: &observations,
                refusals: &refusals,
                guard_facts: &guard_facts,
            };
            let plans = plan(&input, [&ec2_node()]);
            assert_eq!(plans.len(), 1, "{name}");
            let p = &plans[0];
            let got = Guarded {
                state: p.state,
                reason: p.reason,
                action: p.action,
                message: p.message.clone(),
                warning: p.warning.as_ref().map(|w| w.to_string()),
                needs_imdsv1_usage: p.needs_imdsv1_usage,
            };
            assert_eq!(got, want, "{name}");
        }
    }

    fn warning(message: &str) -> GuardWarning {
        GuardWarning {
            message: message.into(),
        }
    }

    #[test]
    fn report_messages() {
        let cases = vec![
            ("neither", None, None, None),
            ("message only", Some("left alone"), None, Some("left alone")),
            (
                "warning only",
                None,
                Some("3 IMDSv1 calls"),
                Some("warning: 3 IMDSv1 calls"),
            ),
            (
                "both",
                Some("waiting"),
                Some("3 IMDSv1 calls"),
                Some("waiting; warning: 3 IMDSv1 calls"),
            ),
        ];
        for (name, message, warn, want) in cases {
            let mut p = fixture("n1", NodeState::Drifted);
            p.message = message.map(String::from);
            p.warning = warn.map(warning);
            let got = p.report_message();
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }

    #[test]
    fn waiting_messages() {
        const HALTED: &str = "rollout halted";
        const WAITING_3: &str = "waiting for the rollout (maxInFlight 3) or the EC2 rate limit";
        struct Case {
            name: &'static str,
            message: Option<&'static str>,
            warning: Option<&'static str>,
            halted: bool,
            max_in_flight: usize,
            want: Option<&'static str>,
        }
        let cases = vec![
            Case {
                name: "halted",
                message: None,
                warning: None,
                halted: true,
                max_in_flight: 3,
                want: Some(HALTED),
            },
            Case {
                name: "waiting for the budget",
                message: None,
                warning: None,
                halted: false,
                max_in_flight: 3,
                want: Some(WAITING_3),
            },
            Case {
                name: "waiting names maxInFlight",
                message: None,
                warning: None,
                halted: false,
                max_in_flight: 1,
                want: Some("waiting for the rollout (maxInFlight 1) or the EC2 rate limit"),
            },
            Case {
                name: "replaces an earlier message",
                message: Some("reading IMDSv1 usage (MetadataNoToken) first"),
                warning: None,
                halted: false,
                max_in_flight: 3,
                want: Some(WAITING_3),
            },
            Case {
                name: "waiting keeps the warning visible",
                message: None,
                warning: Some("3 IMDSv1 calls"),
                halted: false,
                max_in_flight: 3,
                want: Some("waiting for the rollout (maxInFlight 3) or the EC2 rate limit; warning: 3 IMDSv1 calls"),
            },
            Case {
                name: "halted keeps the warning visible",
                message: None,
                warning: Some("3 IMDSv1 calls"),
                halted: true,
                max_in_flight: 3,
                want: Some("rollout halted; warning: 3 IMDSv1 calls"),
            },
        ];
        for Case {
            name,
            message,
            warning: warn,
            halted,
            max_in_flight,
            want,
        } in cases
        {
            let mut p = fixture("n1", NodeState::Drifted);
            p.message = message.map(String::from);
            p.warning = warn.map(warning);
            let before = p.clone();
            p.mark_waiting(halted, max_in_flight);
            let got = p.report_message();
            assert_eq!(got.as_deref(), want, "{name}");
            // Only the message changes.
            let unchanged = NodePlan {
                message: before.message.clone(),
                ..p.clone()
            };
            assert_eq!(unchanged, before, "{name}: only the message changes");
        }
    }

    #[test]
    fn usage_wanted_by_lookback() {
        let needing = |name: &str, h: u64| NodePlan {
            needs_imdsv1_usage: Some(hours(h)),
            ..fixture(name, NodeState::Drifted)
        };
        let no_id = |name: &str, h: u64| NodePlan {
            instance_id: None,
            ..needing(name, h)
        };
        /// Instance ids wanted per lookback (in hours).
        type Wanted = Vec<(u64, Vec<&'static str>)>;
        let cases: Vec<(&str, Vec<NodePlan>, Wanted)> = vec![
            ("no plans", vec![], vec![]),
            (
                "no plan needs usage",
                vec![fixture("a", NodeState::Drifted), fixture("b", NodeState::Compliant)],
                vec![],
            ),
            ("one", vec![needing("a", 24)], vec![(24, vec!["i-a"])]),
            (
                "grouped by lookback, in plan order",
                vec![
                    needing("b", 24),
                    needing("a", 72),
                    fixture("c", NodeState::Drifted),
                    needing("d", 24),
                    needing("e", 1),
                ],
                vec![(1, vec!["i-e"]), (24, vec!["i-b", "i-d"]), (72, vec!["i-a"])],
            ),
            (
                "a plan without an instance id is left out",
                vec![no_id("a", 24), needing("b", 24), no_id("c", 72)],
                vec![(24, vec!["i-b"])],
            ),
        ];
        for (name, plans, want) in cases {
            let want: BTreeMap<Duration, Vec<String>> = want
                .into_iter()
                .map(|(h, ids)| (hours(h), ids.into_iter().map(String::from).collect()))
                .collect();
            let got = usage_wanted(&plans);
            assert_eq!(got, want, "{name}");
        }
    }
}
