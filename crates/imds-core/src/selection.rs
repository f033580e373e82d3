//! Which policies select a node, and what they want for each option once priorities are applied.
//! Pure: no IO, and the result never depends on the order the policies are given in.

use crate::api::{Guards, InstanceMetadataPolicy, MetadataOptions, PolicyMode};
use crate::labels::{LabelLookup, NodeSelector};
use crate::options::{Field, OptionValue};
use kube_core::ResourceExt;
use kube_core::Selector;
use std::collections::BTreeMap;

/// A policy, reduced to what the decisions need.
#[derive(Clone, Debug)]
pub struct PolicyInput {
    /// The policy's name (cluster-scoped).
    pub name: String,
    /// `spec.priority`.
    pub priority: i32,
    /// `spec.mode`.
    pub mode: PolicyMode,
    /// `spec.metadataOptions`.
    pub options: MetadataOptions,
    /// `spec.nodeSelector`, parsed.
    pub selector: NodeSelector,
    /// `spec.guards`.
    pub guards: Guards,
}

/// A policy whose node selector cannot be used (the API server's schema normally prevents it).
#[derive(Debug, thiserror::Error)]
#[error("policy {name}: invalid spec.nodeSelector: {message}")]
pub struct InvalidSelector {
    /// The policy.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

impl PolicyInput {
    /// Reduces a policy object.
    pub fn from_policy(policy: &InstanceMetadataPolicy) -> Result<PolicyInput, InvalidSelector> {
        // The CRD's rule, for objects that never went through the API server (`report --policy`):
        // In and NotIn need values, Exists and DoesNotExist take none.
        for e in policy.spec.node_selector.match_expressions.iter().flatten() {
            let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
            let needs_values = matches!(e.operator.as_str(), "In" | "NotIn");
            if has_values != needs_values && matches!(e.operator.as_str(), "In" | "NotIn" | "Exists" | "DoesNotExist") {
                return Err(InvalidSelector {
                    name: policy.name_any(),
                    message: format!(
                        "matchExpressions key {:?}: operator {} {}",
                        e.key,
                        e.operator,
                        if needs_values {
                            "needs values"
                        } else {
                            "takes no values"
                        }
                    ),
                });
            }
        }
        let selector = Selector::try_from(policy.spec.node_selector.clone())
            .map_err(|e| InvalidSelector {
                name: policy.name_any(),
                message: e.to_string(),
            })?
            .into();
        Ok(PolicyInput {
            name: policy.name_any(),
            priority: policy.spec.priority,
            mode: policy.spec.mode,
            options: policy.spec.metadata_options.clone(),
            selector,
            guards: policy.spec.guards.clone(),
        })
    }

    /// Whether this policy selects a node with these labels.
    pub fn selects(&self, labels: &impl LabelLookup) -> bool {
        self.selector.matches(labels)
    }
}

/// What the policies selecting one node decide for one option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldDecision {
    /// The highest-priority policy that sets the option; ties that agree are merged.
    Decided {
        /// The value.
        value: OptionValue,
        /// Every policy of the winning priority that sets this value, sorted by name.
        owners: Vec<String>,
        /// Enforced when any owner is in `Enforce` mode.
        enforced: bool,
    },
    /// Policies of the same (highest) priority want different values: the option is left alone.
    Conflict {
        /// `(policy, value)` of every disagreeing policy, sorted by name.
        claims: Vec<(String, OptionValue)>,
    },
}

impl FieldDecision {
    /// Whether `policy` takes part in this decision (as an owner or a party to the conflict).
    pub fn involves(&self, policy: &str) -> bool {
        match self {
            FieldDecision::Decided { owners, .. } => owners.iter().any(|o| o == policy),
            FieldDecision::Conflict { claims } => claims.iter().any(|(p, _)| p == policy),
        }
    }
}

/// The decision for each option the selecting policies set (options nobody sets are absent).
pub type Decisions = BTreeMap<Field, FieldDecision>;

/// Applies priorities to the policies that select one node.
pub fn decide<'a>(selecting: impl IntoIterator<Item = &'a PolicyInput>) -> Decisions {
    let selecting: Vec<&PolicyInput> = selecting.into_iter().collect();
    let mut decisions = Decisions::new();
    for field in Field::ALL {
        let claims: Vec<(&PolicyInput, OptionValue)> = selecting
            .iter()
            .filter_map(|p| p.options.get(field).map(|v| (*p, v)))
            .collect();
        let Some(top) = claims.iter().map(|(p, _)| p.priority).max() else {
            continue;
        };
        let mut winners: Vec<(&PolicyInput, OptionValue)> =
            claims.into_iter().filter(|(p, _)| p.priority == top).collect();
        winners.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let first = winners[0].1;
        let decision = if winners.iter().all(|(_, v)| *v == first) {
            FieldDecision::Decided {
                value: first,
                owners: winners.iter().map(|(p, _)| p.name.clone()).collect(),
                enforced: winners.iter().any(|(p, _)| p.mode == PolicyMode::Enforce),
            }
        } else {
            FieldDecision::Conflict {
                claims: winners.iter().map(|(p, v)| (p.name.clone(), *v)).collect(),
            }
        };
        decisions.insert(field, decision);
    }
    decisions
}

/// The options that are decided and enforced: what a modify request must set.
pub fn enforced_options(decisions: &Decisions) -> MetadataOptions {
    let mut options = MetadataOptions::default();
    for (field, decision) in decisions {
        if let FieldDecision::Decided {
            value, enforced: true, ..
        } = decision
        {
            options.set(*field, *value);
        }
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpTokens, Toggle};
    use crate::fixtures::{hop, policy, tokens};

    fn decided(value: OptionValue, owners: &[&str], enforced: bool) -> FieldDecision {
        FieldDecision::Decided {
            value,
            owners: owners.iter().map(|s| s.to_string()).collect(),
            enforced,
        }
    }

    #[test]
    fn selectors_the_api_server_would_refuse_are_errors() {
        let with = |operator: &str, values: Option<Vec<&str>>| {
            let yaml = serde_json::json!({
                "apiVersion": "imds-operator.io/v1alpha1",
                "kind": "InstanceMetadataPolicy",
                "metadata": {"name": "p"},
                "spec": {
                    "nodeSelector": {"matchExpressions": [{"key": "a", "operator": operator, "values": values}]},
                    "metadataOptions": {},
                },
            });
            let policy: InstanceMetadataPolicy = serde_json::from_value(yaml).expect("a policy");
            PolicyInput::from_policy(&policy)
        };
        for (operator, values, ok) in [
            ("In", Some(vec!["x"]), true),
            ("In", Some(vec![]), false),
            ("NotIn", None, false),
            ("Exists", None, true),
            ("Exists", Some(vec!["x"]), false),
            ("DoesNotExist", Some(vec![]), true),
            ("Near", Some(vec!["x"]), false),
        ] {
            let got = with(operator, values.clone());
            assert_eq!(got.is_ok(), ok, "{operator} {values:?}: {:?}", got.err());
        }
    }

    #[test]
    fn priority_and_conflicts() {
        use HttpTokens::*;
        use PolicyMode::*;
        let req = OptionValue::Tokens(Required);
        let opt = OptionValue::Tokens(Optional);
        struct Case {
            name: &'static str,
            policies: Vec<PolicyInput>,
            want: Vec<(Field, FieldDecision)>,
        }
        let cases = vec![
            Case {
                name: "single policy",
                policies: vec![policy("a", 0, Enforce, tokens(Required))],
                want: vec![(Field::HttpTokens, decided(req, &["a"], true))],
            },
            Case {
                name: "higher priority wins",
                policies: vec![
                    policy("a", 0, Enforce, tokens(Optional)),
                    policy("b", 10, Enforce, tokens(Required)),
                ],
                want: vec![(Field::HttpTokens, decided(req, &["b"], true))],
            },
            Case {
                name: "equal priority, different values: conflict",
                policies: vec![
                    policy("b", 5, Enforce, tokens(Required)),
                    policy("a", 5, Enforce, tokens(Optional)),
                ],
                want: vec![(
                    Field::HttpTokens,
                    FieldDecision::Conflict {
                        claims: vec![("a".into(), opt), ("b".into(), req)],
                    },
                )],
            },
            Case {
                name: "equal priority, same value: both own it",
                policies: vec![
                    policy("b", 5, Audit, tokens(Required)),
                    policy("a", 5, Enforce, tokens(Required)),
                ],
                want: vec![(Field::HttpTokens, decided(req, &["a", "b"], true))],
            },
            Case {
                name: "audit winner is not enforced",
                policies: vec![
                    policy("a", 0, Enforce, tokens(Optional)),
                    policy("b", 1, Audit, tokens(Required)),
                ],
                want: vec![(Field::HttpTokens, decided(req, &["b"], false))],
            },
            Case {
                name: "per option: different policies decide different options",
                policies: vec![
                    policy("all", 0, Enforce, tokens(Required)),
                    policy("ng", 10, Enforce, hop(2)),
                ],
                want: vec![
                    (Field::HttpTokens, decided(req, &["all"], true)),
                    (Field::HopLimit, decided(OptionValue::HopLimit(2), &["ng"], true)),
                ],
            },
            Case {
                name: "lower priority conflict is irrelevant when a higher one decides",
                policies: vec![
                    policy("a", 0, Enforce, hop(1)),
                    policy("b", 0, Enforce, hop(3)),
                    policy("c", 1, Enforce, hop(2)),
                ],
                want: vec![(Field::HopLimit, decided(OptionValue::HopLimit(2), &["c"], true))],
            },
            Case {
                name: "no policies",
                policies: vec![],
                want: vec![],
            },
        ];
        for case in cases {
            let want: Decisions = case.want.into_iter().collect();
            assert_eq!(decide(&case.policies), want, "{}", case.name);
            let mut reversed = case.policies.clone();
            reversed.reverse();
            assert_eq!(decide(&reversed), want, "{} (reversed order)", case.name);
        }
    }

    #[test]
    fn enforced_options_skip_audit_and_conflicts() {
        let policies = vec![
            policy("a", 0, PolicyMode::Enforce, hop(2)),
            policy("b", 0, PolicyMode::Audit, tokens(HttpTokens::Required)),
            policy(
                "c",
                0,
                PolicyMode::Enforce,
                MetadataOptions {
                    http_endpoint: Some(Toggle::Enabled),
                    ..Default::default()
                },
            ),
            policy(
                "d",
                0,
                PolicyMode::Enforce,
                MetadataOptions {
                    http_endpoint: Some(Toggle::Disabled),
                    ..Default::default()
                },
            ),
        ];
        let enforced = enforced_options(&decide(&policies));
        assert_eq!(enforced, hop(2));
    }

    #[test]
    fn selectors_match_labels() {
        let mut p = policy("a", 0, PolicyMode::Enforce, hop(2));
        let labels: BTreeMap<String, String> = [("karpenter.sh/nodepool".to_string(), "general".to_string())].into();
        assert!(p.selects(&labels), "empty selector selects every node");
        p.selector = [("karpenter.sh/nodepool", "gpu")].into_iter().collect();
        assert!(!p.selects(&labels));
        p.selector = [("karpenter.sh/nodepool", "general")].into_iter().collect();
        assert!(p.selects(&labels));
    }
}
