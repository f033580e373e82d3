//! Every CamelCase reason the operator writes: on a node in `status.nonCompliantNodes`, on a
//! condition, or on an Event. One closed set, so a reason is never spelled twice.

use std::fmt;

/// A reason, as written to status and Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Node and `Ready`: every option matches and is applied.
    Compliant,
    /// `Ready`: no node matches the selector.
    NoNodesSelected,
    /// Node and `Ready`: options differ from what the policies decide.
    Drifted,
    /// Node, `Ready` and `Reconciling`: EC2 reports the last change as pending.
    Pending,
    /// Node: the instance's options have not been read yet. `Ready` and `Reconciling`: the
    /// operator's first look at a policy, before it read the selected instances.
    NotObservedYet,
    /// `Ready`: some nodes failed.
    Failed,
    /// Node, `Ready`, `Stalled` and Event: equal-priority policies disagree on an option.
    Conflict,
    /// `Reconciling`: modify requests are still to be sent.
    Applying,
    /// `Reconciling`: transient errors are being retried.
    Retrying,
    /// `Reconciling`: no change in flight.
    Idle,
    /// `Stalled`: an Audit policy sees drift.
    AuditModeDrift,
    /// Node, `Stalled` and Event: EC2 denied the call (`UnauthorizedOperation`).
    PermissionDenied,
    /// Node, `Stalled` and Event: EC2 refuses the options for this instance.
    UnsupportedOption,
    /// Node and Event: throttling, 5xx, timeouts.
    TransientError,
    /// Node and Event: any other EC2 error.
    Ec2Error,
    /// `Stalled`: nothing needs a person.
    NoBlockers,
    /// `Reconciling`, `Stalled` and Event: a node this policy changed turned NotReady.
    RolloutHalted,
    /// `Reconciling`, `Stalled` and Event: IMDSv1 calls were refused on an instance this policy
    /// moved to `httpTokens: required`, within `rollout.verify.window` (`MetadataNoTokenRejected`).
    Imdsv1CallsRejected,
    /// Node, `Ready`, `Stalled` and Event: the instance refused IMDSv1 calls after this policy
    /// moved it to IMDSv2 (`onRejectedCalls: Revert`), so it was put back to its recorded options
    /// and is held there until a person re-enforces it.
    Reverted,
    /// Event: a Karpenter EC2NodeClass launches the nodes this policy selects with other options.
    NodeClassMismatch,
    /// Node, `Ready`, `Stalled` and Event: the instance made IMDSv1 calls within the lookback.
    Imdsv1InUse,
    /// Node, `Ready` and `Stalled`: `MetadataNoToken` could not be read.
    Imdsv1UsageUnknown,
    /// Node, `Ready` and `Stalled`: a tag key contains `/` or a space, which EC2 refuses with
    /// `instanceMetadataTags: enabled`.
    TagKeyNotAllowed,
    /// Node: the node has no `spec.providerID` yet.
    NoProviderId,
    /// Node: the providerID belongs to another provider.
    NotAws,
    /// Node: an EKS Fargate node (no EC2 instance to modify).
    Fargate,
    /// Node: `aws://` but not a recognisable instance.
    MalformedProviderId,
    /// Node: DescribeInstances does not know the instance.
    InstanceNotFound,
    /// Event: a modify request was accepted.
    Modified,
    /// Event: an instance got its original options back before its policy was deleted.
    Restored,
    /// Event: EC2 will never take the original options; the policy goes without them.
    RestoreRefused,
    /// Event: some instances are not restored yet (retried).
    RestoreFailed,
    /// `Reconciling` and Event: the deleted policy's options are being put back.
    Restoring,
    /// Event: a person abandoned a restore that could not finish.
    RestoreAbandoned,
    /// Event: a stored record does not parse; it is never applied.
    RecordInvalid,
    /// Event: the record could not be written, so nothing was sent.
    RecordNotWritten,
    /// Event: an instance carries the tag older versions recorded originals in; it is ignored.
    RecordTagIgnored,
    /// `Ready`, `Stalled` and Event: this operator version cannot read the policy (a field or
    /// value from a newer CRD); the policy is not enforced, the others go on.
    SpecNotUnderstood,
    /// Node, `Ready`, `Stalled` and Event: an AWS Organizations declarative policy manages the
    /// account's IMDS settings and EC2 refused the change; not retried until the policy or the
    /// account defaults change.
    DeclarativePolicyEnforced,
    /// `Ready` and `Stalled` of an `InstanceMetadataDefaults` not named `default`.
    NotSingleton,
    /// Event: a reconcile of this policy panicked (a bug); it was contained and is retried
    /// with a backoff, the other policies go on.
    ReconcilePanicked,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 41] = [
        Reason::Compliant,
        Reason::NoNodesSelected,
        Reason::Drifted,
        Reason::Pending,
        Reason::NotObservedYet,
        Reason::Failed,
        Reason::Conflict,
        Reason::Applying,
        Reason::Retrying,
        Reason::Idle,
        Reason::AuditModeDrift,
        Reason::PermissionDenied,
        Reason::UnsupportedOption,
        Reason::TransientError,
        Reason::Ec2Error,
        Reason::NoBlockers,
        Reason::RolloutHalted,
        Reason::Imdsv1CallsRejected,
        Reason::Reverted,
        Reason::NodeClassMismatch,
        Reason::Imdsv1InUse,
        Reason::Imdsv1UsageUnknown,
        Reason::TagKeyNotAllowed,
        Reason::NoProviderId,
        Reason::NotAws,
        Reason::Fargate,
        Reason::MalformedProviderId,
        Reason::InstanceNotFound,
        Reason::Modified,
        Reason::Restored,
        Reason::RestoreRefused,
        Reason::RestoreFailed,
        Reason::Restoring,
        Reason::RestoreAbandoned,
        Reason::RecordInvalid,
        Reason::RecordNotWritten,
        Reason::RecordTagIgnored,
        Reason::SpecNotUnderstood,
        Reason::ReconcilePanicked,
        Reason::DeclarativePolicyEnforced,
        Reason::NotSingleton,
    ];

    /// The CamelCase wording.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Compliant => "Compliant",
            Reason::NoNodesSelected => "NoNodesSelected",
            Reason::Drifted => "Drifted",
            Reason::Pending => "Pending",
            Reason::NotObservedYet => "NotObservedYet",
            Reason::Failed => "Failed",
            Reason::Conflict => "Conflict",
            Reason::Applying => "Applying",
            Reason::Retrying => "Retrying",
            Reason::Idle => "Idle",
            Reason::AuditModeDrift => "AuditModeDrift",
            Reason::PermissionDenied => "PermissionDenied",
            Reason::UnsupportedOption => "UnsupportedOption",
            Reason::TransientError => "TransientError",
            Reason::Ec2Error => "EC2Error",
            Reason::NoBlockers => "NoBlockers",
            Reason::RolloutHalted => "RolloutHalted",
            Reason::Imdsv1CallsRejected => "IMDSv1CallsRejected",
            Reason::Reverted => "Reverted",
            Reason::NodeClassMismatch => "NodeClassMismatch",
            Reason::Imdsv1InUse => "IMDSv1InUse",
            Reason::Imdsv1UsageUnknown => "IMDSv1UsageUnknown",
            Reason::TagKeyNotAllowed => "TagKeyNotAllowed",
            Reason::NoProviderId => "NoProviderID",
            Reason::NotAws => "NotAWS",
            Reason::Fargate => "Fargate",
            Reason::MalformedProviderId => "MalformedProviderID",
            Reason::InstanceNotFound => "InstanceNotFound",
            Reason::Modified => "Modified",
            Reason::Restored => "Restored",
            Reason::RestoreRefused => "RestoreRefused",
            Reason::RestoreFailed => "RestoreFailed",
            Reason::Restoring => "Restoring",
            Reason::RestoreAbandoned => "RestoreAbandoned",
            Reason::RecordInvalid => "RecordInvalid",
            Reason::RecordNotWritten => "RecordNotWritten",
            Reason::RecordTagIgnored => "RecordTagIgnored",
            Reason::SpecNotUnderstood => "SpecNotUnderstood",
            Reason::ReconcilePanicked => "ReconcilePanicked",
            Reason::DeclarativePolicyEnforced => "DeclarativePolicyEnforced",
            Reason::NotSingleton => "NotSingleton",
        }
    }

    /// Whether this is a guard's reason (a node it keeps from being changed).
    pub fn is_guard(self) -> bool {
        matches!(
            self,
            Reason::Imdsv1InUse | Reason::Imdsv1UsageUnknown | Reason::TagKeyNotAllowed
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn wording_is_camel_case_and_unique() {
        use Reason::*;
        let all = Reason::ALL;
        let mut words: Vec<&str> = all.iter().map(|r| r.as_str()).collect();
        assert!(words.iter().all(|w| w.chars().all(|c| c.is_ascii_alphanumeric())));
        assert!(words.iter().all(|w| w.starts_with(|c: char| c.is_ascii_uppercase())));
        words.sort();
        words.dedup();
        assert_eq!(words.len(), all.len(), "no wording used twice");
        let guards: Vec<Reason> = all.into_iter().filter(|r| r.is_guard()).collect();
        assert_eq!(guards, vec![Imdsv1InUse, Imdsv1UsageUnknown, TagKeyNotAllowed]);
    }
}
