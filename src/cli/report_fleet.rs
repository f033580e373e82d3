//! What `imds-operator report` shows of the fleet's history (issue 14): per node, the IMDSv1
//! calls EC2 refused (CloudWatch `MetadataNoTokenRejected` over the last
//! [`REJECTED_LOOKBACK`]: something on that node still uses IMDSv1 and broke when IMDSv2 was
//! required) and the launch source named by its instance's tags; per launch source, how many of
//! its nodes are not compliant — the template or `EC2NodeClass` to fix; and per policy, the
//! Karpenter `EC2NodeClass`es that would launch the nodes it selects with other options.

use crate::aws::cloudwatch::UsageReader;
use imds_core::karpenter::{self, NodeClassReport};
use imds_core::launch_source::LaunchSource;
use imds_core::selection::PolicyInput;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

/// How far back the report sums `MetadataNoTokenRejected`.
pub const REJECTED_LOOKBACK: Duration = Duration::from_secs(24 * 3600);

/// A node's refused IMDSv1 calls and launch source (fields of its report row).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHistory {
    /// IMDSv1 calls EC2 refused on its instance in the last 24h (`MetadataNoTokenRejected`;
    /// absent when not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_calls: Option<u64>,
    /// The launch source its instance's tags name, as `kind/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_source: Option<String>,
}

/// One launch source of the report's nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchSourceRow {
    /// `EC2NodeClass`, `NodeGroup`, `LaunchTemplate` or `AutoScalingGroup`.
    pub kind: String,
    /// Its name (a launch template: `lt-…:version`).
    pub name: String,
    /// Nodes launched from it.
    pub nodes: usize,
    /// Of those, the ones not compliant (drifted, blocked, pending, failed, conflicted).
    pub not_compliant: usize,
}

/// Pure: sets each node's history from its instance (rows: instance, whether the node complies,
/// its history) — refused calls (absent: not read) and launch source — and counts the nodes per
/// launch source, most non-compliant first.
pub fn annotate<'a>(
    rows: impl IntoIterator<Item = (Option<&'a str>, bool, &'a mut NodeHistory)>,
    sources: &HashMap<String, LaunchSource>,
    rejected: &HashMap<String, u64>,
) -> Vec<LaunchSourceRow> {
    let mut by_source: BTreeMap<(String, String), LaunchSourceRow> = BTreeMap::new();
    for (id, compliant, history) in rows {
        let Some(id) = id else { continue };
        history.rejected_calls = rejected.get(id).copied();
        let Some(source) = sources.get(id) else { continue };
        history.launch_source = Some(format!("{}/{}", source.kind, source.name));
        let entry = by_source
            .entry((source.kind.to_string(), source.name.clone()))
            .or_insert_with(|| LaunchSourceRow {
                kind: source.kind.to_string(),
                name: source.name.clone(),
                ..LaunchSourceRow::default()
            });
        entry.nodes += 1;
        if !compliant {
            entry.not_compliant += 1;
        }
    }
    let mut out: Vec<LaunchSourceRow> = by_source.into_values().collect();
    out.sort_by(|a, b| b.not_compliant.cmp(&a.not_compliant).then(a.name.cmp(&b.name)));
    out
}

/// The refused IMDSv1 calls per instance over [`REJECTED_LOOKBACK`]; an instance CloudWatch gave
/// no answer for is absent (a note on stderr says why).
pub async fn read_rejected(usage: &UsageReader, ids: &[String], now: SystemTime) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (id, answer) in usage.rejected_calls(ids, REJECTED_LOOKBACK, now).await {
        match answer {
            Ok(series) => {
                out.insert(id, series.total().round() as u64);
            }
            Err(e) => eprintln!("note: MetadataNoTokenRejected of {id} unreadable: {e}"),
        }
    }
    out
}

/// The launch-source lines of the table output.
pub fn text(sources: &[LaunchSourceRow]) -> String {
    if sources.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nlaunch sources (from instance tags): fix those with non-compliant nodes\n");
    for s in sources {
        out.push_str(&format!(
            "  {} {}: {} nodes, {} not compliant\n",
            s.kind, s.name, s.nodes, s.not_compliant
        ));
    }
    out
}

/// The node classes that disagree with one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyNodeClasses {
    /// The policy.
    pub policy: String,
    /// The node classes, with the NodePools using them and each option that differs.
    pub node_classes: Vec<NodeClassReport>,
}

/// Reads Karpenter's node classes and pools and compares them with every policy; empty without
/// Karpenter (a note on stderr when they cannot be read).
pub async fn node_classes(client: &kube::Client, policies: &[PolicyInput]) -> Vec<PolicyNodeClasses> {
    let inventory = match crate::controller::karpenter::read(client).await {
        Ok(Some(inventory)) => inventory,
        Ok(None) => return Vec::new(),
        Err(e) => {
            eprintln!("note: Karpenter EC2NodeClasses unreadable: {e}");
            return Vec::new();
        }
    };
    policies
        .iter()
        .map(|p| PolicyNodeClasses {
            policy: p.name.clone(),
            node_classes: karpenter::mismatches(p, &inventory.classes, &inventory.pools),
        })
        .filter(|p| !p.node_classes.is_empty())
        .collect()
}

/// The node-class lines of the table output.
pub fn node_classes_text(section: &[PolicyNodeClasses]) -> String {
    let mut out = String::new();
    for p in section {
        for c in &p.node_classes {
            out.push_str(&format!(
                "policy {}: Karpenter EC2NodeClass {} launches its nodes with {}\n",
                p.policy,
                c.node_class,
                c.mismatches.join(", ")
            ));
        }
    }
    if !out.is_empty() {
        out.insert(0, '\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(kind: &'static str, name: &str) -> LaunchSource {
        LaunchSource {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn rows_get_their_calls_and_sources_and_sources_are_counted() {
        let nodes = [
            (Some("i-a"), false),
            (Some("i-b"), true),
            (Some("i-c"), false),
            (None, true),
        ];
        let mut rows = vec![NodeHistory::default(); nodes.len()];
        let sources: HashMap<String, LaunchSource> = [
            ("i-a".to_string(), source("LaunchTemplate", "lt-1:3")),
            ("i-b".to_string(), source("LaunchTemplate", "lt-1:3")),
            ("i-c".to_string(), source("EC2NodeClass", "default")),
        ]
        .into();
        let rejected: HashMap<String, u64> = [("i-b".to_string(), 7), ("i-a".to_string(), 0)].into();
        let inputs = nodes.iter().zip(rows.iter_mut()).map(|((id, ok), h)| (*id, *ok, h));
        let counted = annotate(inputs, &sources, &rejected);
        assert_eq!(rows[1].rejected_calls, Some(7));
        assert_eq!(rows[0].rejected_calls, Some(0));
        assert_eq!(rows[2].rejected_calls, None, "not read");
        assert_eq!(rows[0].launch_source.as_deref(), Some("LaunchTemplate/lt-1:3"));
        assert_eq!(rows[3].launch_source, None);
        let got: Vec<(&str, usize, usize)> = counted
            .iter()
            .map(|s| (s.name.as_str(), s.nodes, s.not_compliant))
            .collect();
        assert_eq!(got, vec![("default", 1, 1), ("lt-1:3", 2, 1)]);
        let shown = text(&counted);
        assert!(
            shown.contains("LaunchTemplate lt-1:3: 2 nodes, 1 not compliant"),
            "{shown}"
        );
        assert_eq!(text(&[]), "");
    }

    #[test]
    fn node_class_lines() {
        let section = [PolicyNodeClasses {
            policy: "v2".into(),
            node_classes: vec![NodeClassReport {
                node_class: "legacy".into(),
                node_pools: vec!["old".into()],
                mismatches: vec!["httpTokens: optional → required".into()],
            }],
        }];
        assert_eq!(
            node_classes_text(&section),
            "\npolicy v2: Karpenter EC2NodeClass legacy launches its nodes with httpTokens: optional → required\n"
        );
        assert_eq!(node_classes_text(&[]), "");
    }
}
