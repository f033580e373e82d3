//! From node plans (after applying) to the policy's status: counts, the bounded list of
//! non-compliant nodes, and kstatus conditions. Pure.

use crate::api::{InstanceMetadataPolicyStatus, NodeReport, PolicyMode, RolloutHalt, condition};
use crate::observation::FailureKind;
use crate::plan::{NodePlan, NodeState};
use crate::reason::Reason;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// How many non-compliant nodes the status lists.
pub const MAX_LISTED_NODES: usize = 20;

/// Facts about this reconcile that the node plans do not carry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Modify requests sent (and accepted) in this reconcile.
    pub modified: usize,
    /// Drifted nodes whose request waits for the rate limit, the rollout or the next reconcile.
    pub deferred: usize,
    /// The staged rollout is halted.
    pub halt: Option<RolloutHalt>,
    /// The resume annotation value acted on.
    pub last_resume: Option<String>,
}

/// Builds the status of a policy.
pub fn summarize(
    mode: PolicyMode,
    generation: i64,
    plans: &[NodePlan],
    progress: &Progress,
    previous: &[Condition],
    now: Time,
) -> InstanceMetadataPolicyStatus {
    let count = |state: NodeState| plans.iter().filter(|p| p.state == state).count() as i32;
    let mut status = InstanceMetadataPolicyStatus {
        observed_generation: Some(generation),
        matched_nodes: plans.len() as i32,
        compliant_nodes: count(NodeState::Compliant),
        drifted_nodes: count(NodeState::Drifted),
        pending_nodes: count(NodeState::Pending),
        skipped_nodes: count(NodeState::Skipped),
        failed_nodes: count(NodeState::Failed),
        conflicted_nodes: count(NodeState::Conflict),
        blocked_nodes: count(NodeState::Blocked),
        rollout_halt: progress.halt.clone(),
        last_resume: progress.last_resume.clone(),
        restoring_nodes: None,
        restored_nodes: None,
        launch_sources: Vec::new(),
        non_compliant_nodes: Vec::new(),
        account_defaults: None,
        node_classes: Vec::new(),
        policy_reports: None,
        last_sync_time: Some(now.clone()),
        conditions: Vec::new(),
    };

    let mut listed: Vec<&NodePlan> = plans.iter().filter(|p| p.state != NodeState::Compliant).collect();
    listed.sort_by(|a, b| (a.state, &a.node).cmp(&(b.state, &b.node)));
    status.non_compliant_nodes = listed
        .into_iter()
        .take(MAX_LISTED_NODES)
        .map(|p| NodeReport {
            node: p.node.clone(),
            instance_id: p.instance_id.clone(),
            reason: p.reason.to_string(),
            drift: p.drift.clone(),
            message: p.report_message(),
        })
        .collect();

    let wanted = conditions(mode, &status, plans, progress);
    status.conditions = wanted
        .into_iter()
        .map(|(type_, is_true, reason, message)| {
            condition_with_history(previous, type_, is_true, reason, message, generation, &now)
        })
        .collect();
    status
}

/// The status written when the operator first sees a policy (it has none), before any EC2 read
/// or request: `Reconciling=True` from the first look rather than from the end of the first
/// reconcile (which reads and changes instances at the EC2 rate limit), because kstatus — and so
/// Flux — calls an object without status or conditions Current.
pub fn first_look(generation: i64, now: Time) -> InstanceMetadataPolicyStatus {
    let message = "the operator has not read the selected instances yet".to_string();
    let wanted = [
        (condition::READY, false, Reason::NotObservedYet, message.clone()),
        (condition::RECONCILING, true, Reason::NotObservedYet, message),
        (
            condition::STALLED,
            false,
            Reason::NoBlockers,
            "nothing needs a person".to_string(),
        ),
    ];
    InstanceMetadataPolicyStatus {
        observed_generation: Some(generation),
        conditions: wanted
            .into_iter()
            .map(|(type_, is_true, reason, message)| {
                condition_with_history(&[], type_, is_true, reason, message, generation, &now)
            })
            .collect(),
        ..Default::default()
    }
}

/// What a reconcile of an `onDelete: Restore` policy being deleted did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreProgress {
    /// Nodes whose options were put back in this reconcile.
    pub restored: usize,
    /// Nodes still to restore.
    pub remaining: usize,
    /// The restore rollout is halted.
    pub halt: Option<RolloutHalt>,
    /// The resume annotation value acted on.
    pub last_resume: Option<String>,
}

/// The status of a policy being restored before deletion: the last status with the restore's
/// progress and conditions (`Reconciling` reason `Restoring`, or the halt).
pub fn restoring(
    previous: &InstanceMetadataPolicyStatus,
    generation: i64,
    progress: &RestoreProgress,
    now: Time,
) -> InstanceMetadataPolicyStatus {
    let mut status = previous.clone();
    let restored = status.restored_nodes.unwrap_or(0) + progress.restored as i32;
    let remaining = progress.remaining;
    status.observed_generation = Some(generation);
    status.restored_nodes = Some(restored);
    status.restoring_nodes = Some(remaining as i32);
    status.rollout_halt = progress.halt.clone();
    status.last_resume = progress.last_resume.clone();
    status.last_sync_time = Some(now.clone());
    let ready = (
        false,
        Reason::Restoring,
        format!("the policy is being deleted; {remaining} nodes to restore"),
    );
    let (reconciling, stalled) = match &progress.halt {
        Some(halt) => (
            (
                false,
                Reason::RolloutHalted,
                format!("restore halted at node {}", halt.node),
            ),
            (
                true,
                Reason::RolloutHalted,
                format!(
                    "node {} ({}) turned NotReady after its restore; set annotation {}=<new value> to resume or {}=true to give up",
                    halt.node,
                    halt.instance_id,
                    crate::api::RESUME_ANNOTATION,
                    crate::api::ABANDON_RESTORE_ANNOTATION
                ),
            ),
        ),
        None => (
            (
                true,
                Reason::Restoring,
                format!("restored {restored} nodes, {remaining} to go"),
            ),
            (false, Reason::NoBlockers, "nothing needs a person".to_string()),
        ),
    };
    let wanted = [
        (condition::READY, ready),
        (condition::RECONCILING, reconciling),
        (condition::STALLED, stalled),
    ];
    status.conditions = wanted
        .into_iter()
        .map(|(type_, (is_true, reason, message))| {
            condition_with_history(&previous.conditions, type_, is_true, reason, message, generation, &now)
        })
        .collect();
    status
}

type WantedCondition = (&'static str, bool, Reason, String);

/// What the three conditions are judged on.
struct Facts<'a> {
    s: &'a InstanceMetadataPolicyStatus,
    plans: &'a [NodePlan],
    progress: &'a Progress,
    permission: usize,
    unsupported: usize,
    declarative: usize,
    transient: usize,
    actionable: usize,
    audit_drift: bool,
    blocked: Option<&'a NodePlan>,
}

type Judged = (bool, Reason, String);

fn conditions(
    mode: PolicyMode,
    s: &InstanceMetadataPolicyStatus,
    plans: &[NodePlan],
    progress: &Progress,
) -> Vec<WantedCondition> {
    let failed_with = |kind: FailureKind| plans.iter().filter(|p| p.failure == Some(kind)).count();
    let facts = Facts {
        s,
        plans,
        progress,
        permission: failed_with(FailureKind::PermissionDenied),
        unsupported: failed_with(FailureKind::Unsupported),
        declarative: failed_with(FailureKind::DeclarativePolicy),
        transient: failed_with(FailureKind::Transient) + failed_with(FailureKind::Other),
        actionable: plans.iter().filter(|p| p.action.is_some()).count(),
        audit_drift: mode == PolicyMode::Audit && s.drifted_nodes > 0,
        blocked: plans.iter().find(|p| p.state == NodeState::Blocked),
    };
    let (ready, reconciling, stalled) = (ready(&facts), reconciling(&facts), stalled(&facts));
    vec![
        (condition::READY, ready.0, ready.1, ready.2),
        (condition::RECONCILING, reconciling.0, reconciling.1, reconciling.2),
        (condition::STALLED, stalled.0, stalled.1, stalled.2),
    ]
}

/// `Ready`: every selected instance complies (or none is selected).
fn ready(f: &Facts) -> Judged {
    let s = f.s;
    let blocked = f.blocked;
    if s.matched_nodes == 0 {
        (
            true,
            Reason::NoNodesSelected,
            "no node matches spec.nodeSelector".to_string(),
        )
    } else if s.failed_nodes > 0 {
        (
            false,
            Reason::Failed,
            format!("{} of {} nodes failed", s.failed_nodes, s.matched_nodes),
        )
    } else if s.conflicted_nodes > 0 {
        (
            false,
            Reason::Conflict,
            format!(
                "{} nodes have options that equal-priority policies disagree on",
                s.conflicted_nodes
            ),
        )
    } else if let Some(b) = blocked {
        (false, b.reason, format!("{} nodes blocked by a guard", s.blocked_nodes))
    } else if s.drifted_nodes > 0 {
        (
            false,
            Reason::Drifted,
            format!("{} of {} nodes drifted", s.drifted_nodes, s.matched_nodes),
        )
    } else if s.pending_nodes > 0 {
        (
            false,
            Reason::Pending,
            format!("{} nodes have changes pending", s.pending_nodes),
        )
    } else {
        let mut message = format!("{} of {} nodes compliant", s.compliant_nodes, s.matched_nodes);
        if s.skipped_nodes > 0 {
            message.push_str(&format!(", {} skipped", s.skipped_nodes));
        }
        (true, Reason::Compliant, message)
    }
}

/// `Reconciling`: work is in flight; judged after applying, so a request EC2 answered
/// `applied` is no longer work in flight.
fn reconciling(f: &Facts) -> Judged {
    let s = f.s;
    let (progress, actionable, transient) = (f.progress, f.actionable, f.transient);
    if let Some(halt) = &progress.halt {
        (
            false,
            halt_reason(halt),
            format!("rollout halted at node {}", halt.node),
        )
    } else if progress.deferred > 0 || actionable > 0 {
        let n = progress.deferred.max(actionable);
        (true, Reason::Applying, format!("{n} instances still to modify"))
    } else if s.pending_nodes > 0 {
        (
            true,
            Reason::Pending,
            format!("waiting for {} instances to apply", s.pending_nodes),
        )
    } else if transient > 0 {
        (
            true,
            Reason::Retrying,
            format!("retrying {transient} instances after transient errors"),
        )
    } else {
        (false, Reason::Idle, "no change in flight".to_string())
    }
}

/// The reason of a halt: a node turned NotReady, or refused IMDSv1 calls after its change.
pub fn halt_reason(halt: &RolloutHalt) -> Reason {
    match halt.rejected_calls {
        Some(_) => Reason::Imdsv1CallsRejected,
        None => Reason::RolloutHalted,
    }
}

/// What a halt says to a person: the node, why, and how to resume.
pub fn halt_message(halt: &RolloutHalt) -> String {
    let why = match halt.rejected_calls {
        Some(calls) => format!(
            "refused {calls} IMDSv1 calls (CloudWatch MetadataNoTokenRejected) after it was moved to httpTokens: required: something on it still uses IMDSv1; fix the caller (or set its options back)"
        ),
        None => "turned NotReady after its change".to_string(),
    };
    format!(
        "node {} ({}) {why}; set annotation {}=<new value> or change the spec to resume",
        halt.node,
        halt.instance_id,
        crate::api::RESUME_ANNOTATION
    )
}

/// `Stalled`: progress needs a person.
fn stalled(f: &Facts) -> Judged {
    let s = f.s;
    let (plans, progress, blocked) = (f.plans, f.progress, f.blocked);
    let (permission, unsupported, audit_drift) = (f.permission, f.unsupported, f.audit_drift);
    if permission > 0 {
        (
            true,
            Reason::PermissionDenied,
            first_message(plans, FailureKind::PermissionDenied),
        )
    } else if let Some(halt) = &progress.halt {
        (true, halt_reason(halt), halt_message(halt))
    } else if f.declarative > 0 {
        (
            true,
            Reason::DeclarativePolicyEnforced,
            first_message(plans, FailureKind::DeclarativePolicy),
        )
    } else if unsupported > 0 {
        (
            true,
            Reason::UnsupportedOption,
            first_message(plans, FailureKind::Unsupported),
        )
    } else if let Some(b) = blocked {
        (
            true,
            b.reason,
            format!(
                "{} nodes blocked; first: {}: {}",
                s.blocked_nodes,
                b.node,
                b.message.clone().unwrap_or_default()
            ),
        )
    } else if s.conflicted_nodes > 0 {
        let msg = plans
            .iter()
            .find(|p| p.state == NodeState::Conflict)
            .and_then(|p| p.message.clone())
            .unwrap_or_default();
        (true, Reason::Conflict, msg)
    } else if audit_drift {
        (
            true,
            Reason::AuditModeDrift,
            format!(
                "Audit mode: {} nodes drifted; switch to Enforce or fix them",
                s.drifted_nodes
            ),
        )
    } else {
        (false, Reason::NoBlockers, "nothing needs a person".to_string())
    }
}

fn first_message(plans: &[NodePlan], kind: FailureKind) -> String {
    let affected: Vec<&NodePlan> = plans.iter().filter(|p| p.failure == Some(kind)).collect();
    let first = affected
        .first()
        .map(|p| format!("{}: {}", p.node, p.message.clone().unwrap_or_default()))
        .unwrap_or_default();
    format!("{} nodes; first: {first}", affected.len())
}

/// A condition whose `lastTransitionTime` moves only when its status flips.
pub fn condition_with_history(
    previous: &[Condition],
    type_: &str,
    is_true: bool,
    reason: Reason,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    let status = if is_true { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    fn plan(node: &str, state: NodeState) -> NodePlan {
        NodePlan {
            node: node.into(),
            instance_id: Some(format!("i-{node}")),
            state,
            reason: match state {
                NodeState::Failed => Reason::Failed,
                NodeState::Conflict => Reason::Conflict,
                NodeState::Blocked => Reason::TagKeyNotAllowed,
                NodeState::Drifted => Reason::Drifted,
                NodeState::Pending => Reason::Pending,
                NodeState::Skipped => Reason::NoProviderId,
                NodeState::Compliant => Reason::Compliant,
            },
            message: None,
            warning: None,
            drift: vec![],
            action: None,
            failure: None,
            needs_imdsv1_usage: None,
        }
    }

    fn blocked(node: &str, reason: Reason) -> NodePlan {
        let mut p = plan(node, NodeState::Blocked);
        p.reason = reason;
        p.message = Some("guard".into());
        p
    }

    fn failed(node: &str, kind: FailureKind) -> NodePlan {
        let mut p = plan(node, NodeState::Failed);
        p.failure = Some(kind);
        p.message = Some("boom".into());
        p
    }

    fn cond<'a>(s: &'a InstanceMetadataPolicyStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).expect("condition present")
    }

    #[test]
    fn conditions_table() {
        use NodeState::*;
        let mut drifted_with_action = plan("d", Drifted);
        drifted_with_action.action = Some(crate::options::FullOptions::merge(
            &Default::default(),
            &Default::default(),
        ));
        struct Case {
            name: &'static str,
            mode: PolicyMode,
            plans: Vec<NodePlan>,
            progress: Progress,
            want: [(&'static str, &'static str); 3],
        }
        let none = Progress::default();
        let cases = vec![
            Case {
                name: "all compliant",
                mode: PolicyMode::Enforce,
                plans: vec![plan("a", Compliant), plan("b", Skipped)],
                progress: none.clone(),
                want: [("True", "Compliant"), ("False", "Idle"), ("False", "NoBlockers")],
            },
            Case {
                name: "no nodes",
                mode: PolicyMode::Enforce,
                plans: vec![],
                progress: none.clone(),
                want: [("True", "NoNodesSelected"), ("False", "Idle"), ("False", "NoBlockers")],
            },
            Case {
                name: "pending after modify",
                mode: PolicyMode::Enforce,
                plans: vec![plan("a", Pending)],
                progress: Progress {
                    modified: 1,
                    ..Default::default()
                },
                want: [("False", "Pending"), ("True", "Pending"), ("False", "NoBlockers")],
            },
            Case {
                name: "modified and applied at once",
                mode: PolicyMode::Enforce,
                plans: vec![plan("a", Compliant)],
                progress: Progress {
                    modified: 1,
                    ..Default::default()
                },
                want: [("True", "Compliant"), ("False", "Idle"), ("False", "NoBlockers")],
            },
            Case {
                name: "pending only",
                mode: PolicyMode::Enforce,
                plans: vec![plan("a", Pending), plan("b", Compliant)],
                progress: none.clone(),
                want: [("False", "Pending"), ("True", "Pending"), ("False", "NoBlockers")],
            },
            Case {
                name: "drift waiting for rate limit",
                mode: PolicyMode::Enforce,
                plans: vec![drifted_with_action.clone()],
                progress: Progress {
                    deferred: 1,
                    ..Default::default()
                },
                want: [("False", "Drifted"), ("True", "Applying"), ("False", "NoBlockers")],
            },
            Case {
                name: "audit drift stalls",
                mode: PolicyMode::Audit,
                plans: vec![plan("a", Drifted)],
                progress: none.clone(),
                want: [("False", "Drifted"), ("False", "Idle"), ("True", "AuditModeDrift")],
            },
            Case {
                name: "permission denied stalls",
                mode: PolicyMode::Enforce,
                plans: vec![failed("a", FailureKind::PermissionDenied), plan("b", Compliant)],
                progress: none.clone(),
                want: [("False", "Failed"), ("False", "Idle"), ("True", "PermissionDenied")],
            },
            Case {
                name: "unsupported option stalls",
                mode: PolicyMode::Enforce,
                plans: vec![failed("a", FailureKind::Unsupported)],
                progress: none.clone(),
                want: [("False", "Failed"), ("False", "Idle"), ("True", "UnsupportedOption")],
            },
            Case {
                name: "throttled is retried, not stalled",
                mode: PolicyMode::Enforce,
                plans: vec![failed("a", FailureKind::Transient)],
                progress: none.clone(),
                want: [("False", "Failed"), ("True", "Retrying"), ("False", "NoBlockers")],
            },
            Case {
                name: "guard blocks",
                mode: PolicyMode::Enforce,
                plans: vec![blocked("a", Reason::Imdsv1InUse), plan("b", Compliant)],
                progress: none.clone(),
                want: [("False", "IMDSv1InUse"), ("False", "Idle"), ("True", "IMDSv1InUse")],
            },
            Case {
                name: "halted rollout",
                mode: PolicyMode::Enforce,
                plans: vec![drifted_with_action.clone()],
                progress: Progress {
                    deferred: 1,
                    halt: Some(crate::api::RolloutHalt {
                        node: "d".into(),
                        instance_id: "i-d".into(),
                        since: at(1),
                        generation: 3,
                        rejected_calls: None,
                    }),
                    ..Default::default()
                },
                want: [
                    ("False", "Drifted"),
                    ("False", "RolloutHalted"),
                    ("True", "RolloutHalted"),
                ],
            },
            Case {
                name: "conflict stalls",
                mode: PolicyMode::Enforce,
                plans: vec![plan("a", Conflict)],
                progress: none.clone(),
                want: [("False", "Conflict"), ("False", "Idle"), ("True", "Conflict")],
            },
        ];
        for c in cases {
            let s = summarize(c.mode, 3, &c.plans, &c.progress, &[], at(100));
            for (t, (status, reason)) in ["Ready", "Reconciling", "Stalled"].iter().zip(c.want) {
                let got = cond(&s, t);
                assert_eq!(
                    (got.status.as_str(), got.reason.as_str()),
                    (status, reason),
                    "{}: {t}",
                    c.name
                );
                assert_eq!(got.observed_generation, Some(3));
            }
            assert_eq!(s.observed_generation, Some(3));
        }
    }

    #[test]
    fn counts_and_bounded_list() {
        let mut plans: Vec<NodePlan> = (0..30).map(|i| plan(&format!("n{i:02}"), NodeState::Drifted)).collect();
        plans.push(failed("zz", FailureKind::Other));
        plans.push(plan("ok", NodeState::Compliant));
        let s = summarize(PolicyMode::Enforce, 1, &plans, &Progress::default(), &[], at(1));
        assert_eq!(s.matched_nodes, 32);
        assert_eq!(s.drifted_nodes, 30);
        assert_eq!(s.failed_nodes, 1);
        assert_eq!(s.compliant_nodes, 1);
        assert_eq!(s.non_compliant_nodes.len(), MAX_LISTED_NODES);
        assert_eq!(s.non_compliant_nodes[0].node, "zz", "failures first");
        assert_eq!(s.non_compliant_nodes[1].node, "n00");
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let first = summarize(
            PolicyMode::Enforce,
            1,
            &[plan("a", NodeState::Drifted)],
            &Progress::default(),
            &[],
            at(10),
        );
        let same = summarize(
            PolicyMode::Enforce,
            2,
            &[plan("a", NodeState::Drifted)],
            &Progress::default(),
            &first.conditions,
            at(20),
        );
        assert_eq!(cond(&same, "Ready").last_transition_time, at(10));
        let flipped = summarize(
            PolicyMode::Enforce,
            2,
            &[plan("a", NodeState::Compliant)],
            &Progress::default(),
            &same.conditions,
            at(30),
        );
        assert_eq!(cond(&flipped, "Ready").last_transition_time, at(30));
        assert_eq!(
            cond(&flipped, "Stalled").last_transition_time,
            at(10),
            "Stalled stayed False"
        );
    }

    #[test]
    fn restoring_shows_progress_and_halts() {
        let previous = InstanceMetadataPolicyStatus {
            restored_nodes: Some(2),
            ..Default::default()
        };
        let going = RestoreProgress {
            restored: 1,
            remaining: 4,
            halt: None,
            last_resume: None,
        };
        let s = restoring(&previous, 3, &going, at(100));
        assert_eq!((s.restored_nodes, s.restoring_nodes), (Some(3), Some(4)));
        let got: Vec<(&str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Ready", "False", "Restoring"),
                ("Reconciling", "True", "Restoring"),
                ("Stalled", "False", "NoBlockers")
            ]
        );
        assert_eq!(cond(&s, "Reconciling").message, "restored 3 nodes, 4 to go");
        let halted = RestoreProgress {
            halt: Some(RolloutHalt {
                node: "n1".into(),
                instance_id: "i-1".into(),
                since: at(90),
                generation: 3,
                rejected_calls: None,
            }),
            ..going
        };
        let s = restoring(&previous, 3, &halted, at(100));
        assert_eq!(cond(&s, "Stalled").reason, "RolloutHalted");
        assert!(cond(&s, "Stalled").message.contains("abandon-restore"), "{s:?}");
        assert_eq!(cond(&s, "Reconciling").status, "False");
    }

    #[test]
    fn the_first_look_is_in_progress_at_the_policys_generation() {
        let s = first_look(4, at(100));
        assert_eq!(s.observed_generation, Some(4));
        let judged: Vec<(&str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            judged,
            vec![
                ("Ready", "False", "NotObservedYet"),
                ("Reconciling", "True", "NotObservedYet"),
                ("Stalled", "False", "NoBlockers"),
            ]
        );
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4) && c.last_transition_time == at(100))
        );
        assert_eq!(
            (s.matched_nodes, s.last_sync_time.clone()),
            (0, None),
            "nothing observed yet"
        );
    }
}
