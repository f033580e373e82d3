//! The source of drift: which launch template, EKS node group, Karpenter `EC2NodeClass` or Auto
//! Scaling group keeps launching instances the policy then has to change. The operator fixes new
//! nodes seconds after they appear, forever, if their source keeps launching them on IMDSv1; this
//! names the source to fix. Pure: the tags and times are handed in.

use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Karpenter's tag on the instances of an `EC2NodeClass`.
pub const EC2_NODE_CLASS_TAG: &str = "karpenter.k8s.aws/ec2nodeclass";
/// EKS's tag on the instances of a managed node group.
pub const NODE_GROUP_TAG: &str = "eks:nodegroup-name";
/// EC2's tags on instances launched from a launch template.
pub const LAUNCH_TEMPLATE_ID_TAG: &str = "aws:ec2launchtemplate:id";
/// The launch template version.
pub const LAUNCH_TEMPLATE_VERSION_TAG: &str = "aws:ec2launchtemplate:version";
/// EC2 Auto Scaling's tag on its instances.
pub const AUTO_SCALING_GROUP_TAG: &str = "aws:autoscaling:groupName";
/// Every tag a launch source is read from.
pub const SOURCE_TAGS: [&str; 5] = [
    EC2_NODE_CLASS_TAG,
    NODE_GROUP_TAG,
    LAUNCH_TEMPLATE_ID_TAG,
    LAUNCH_TEMPLATE_VERSION_TAG,
    AUTO_SCALING_GROUP_TAG,
];

/// An instance launched at most this long before the operator changed it counts as new (its
/// source launched it drifted).
pub const NEW_INSTANCE_AGE: Duration = Duration::from_secs(3600);
/// Changes are counted over this window.
pub const COUNT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// At most this many sources in a policy's status.
pub const MAX_REPORTED: usize = 10;

/// Where an instance came from: the most specific of its tags.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaunchSource {
    /// `EC2NodeClass`, `NodeGroup`, `LaunchTemplate` or `AutoScalingGroup`.
    pub kind: &'static str,
    /// Its name (a launch template: `lt-…:version`).
    pub name: String,
}

/// The launch source named by an instance's tags (`tag`: a tag's value by key): a Karpenter
/// `EC2NodeClass`, else an EKS node group, else a launch template (with its version), else an
/// Auto Scaling group.
pub fn launch_source<'a>(tag: impl Fn(&str) -> Option<&'a str>) -> Option<LaunchSource> {
    let named = |kind: &'static str, name: &str| LaunchSource {
        kind,
        name: name.to_string(),
    };
    if let Some(class) = tag(EC2_NODE_CLASS_TAG) {
        return Some(named("EC2NodeClass", class));
    }
    if let Some(group) = tag(NODE_GROUP_TAG) {
        return Some(named("NodeGroup", group));
    }
    if let Some(template) = tag(LAUNCH_TEMPLATE_ID_TAG) {
        let version = tag(LAUNCH_TEMPLATE_VERSION_TAG)
            .map(|v| format!(":{v}"))
            .unwrap_or_default();
        return Some(named("LaunchTemplate", &format!("{template}{version}")));
    }
    tag(AUTO_SCALING_GROUP_TAG).map(|asg| named("AutoScalingGroup", asg))
}

/// Whether an instance launched at `launched` was new when changed at `changed`.
pub fn is_new(launched: Option<Timestamp>, changed: Timestamp) -> bool {
    launched.is_some_and(|l| changed.as_second().saturating_sub(l.as_second()) <= NEW_INSTANCE_AGE.as_secs() as i64)
}

/// One launch source in a policy's status.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchSourceCount {
    /// `EC2NodeClass` (Karpenter), `NodeGroup` (EKS managed node group), `LaunchTemplate`
    /// (`lt-…:version`) or `AutoScalingGroup`.
    pub kind: String,
    /// The source's name.
    pub name: String,
    /// New instances of it (launched less than an hour before) this policy changed in the last
    /// 24 hours.
    pub instances: i32,
}

/// The new instances each source launched drifted, by the time they were changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceTally {
    changes: BTreeMap<LaunchSource, Vec<Timestamp>>,
}

impl SourceTally {
    /// Counts a change at `at` of a new instance from `source`.
    pub fn record(&mut self, source: LaunchSource, at: Timestamp) {
        self.changes.entry(source).or_default().push(at);
    }

    /// Forgets changes older than [`COUNT_WINDOW`] at `now`.
    pub fn expire(&mut self, now: Timestamp) {
        let oldest = now.as_second().saturating_sub(COUNT_WINDOW.as_secs() as i64);
        for times in self.changes.values_mut() {
            times.retain(|t| t.as_second() >= oldest);
        }
        self.changes.retain(|_, times| !times.is_empty());
    }

    /// The sources with changes in the window at `now`, most first (then by kind and name), at
    /// most [`MAX_REPORTED`].
    pub fn counts(&self, now: Timestamp) -> Vec<LaunchSourceCount> {
        let mut tally = self.clone();
        tally.expire(now);
        let mut counts: Vec<LaunchSourceCount> = tally
            .changes
            .into_iter()
            .map(|(source, times)| LaunchSourceCount {
                kind: source.kind.to_string(),
                name: source.name,
                instances: i32::try_from(times.len()).unwrap_or(i32::MAX),
            })
            .collect();
        counts.sort_by(|a, b| {
            b.instances
                .cmp(&a.instances)
                .then_with(|| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)))
        });
        counts.truncate(MAX_REPORTED);
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    #[test]
    fn the_most_specific_tag_names_the_source() {
        /// (tags, the source they name as kind and name)
        type Case = (Vec<(&'static str, &'static str)>, Option<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (vec![], None),
            (vec![("Name", "x")], None),
            (
                vec![(AUTO_SCALING_GROUP_TAG, "asg-1")],
                Some(("AutoScalingGroup", "asg-1")),
            ),
            (
                vec![
                    (AUTO_SCALING_GROUP_TAG, "asg-1"),
                    (LAUNCH_TEMPLATE_ID_TAG, "lt-0a"),
                    (LAUNCH_TEMPLATE_VERSION_TAG, "7"),
                ],
                Some(("LaunchTemplate", "lt-0a:7")),
            ),
            (
                vec![(LAUNCH_TEMPLATE_ID_TAG, "lt-0a")],
                Some(("LaunchTemplate", "lt-0a")),
            ),
            (
                vec![(LAUNCH_TEMPLATE_ID_TAG, "lt-0a"), (NODE_GROUP_TAG, "ng-general")],
                Some(("NodeGroup", "ng-general")),
            ),
            (
                vec![(NODE_GROUP_TAG, "ng"), (EC2_NODE_CLASS_TAG, "default")],
                Some(("EC2NodeClass", "default")),
            ),
        ];
        for (tags, want) in cases {
            let got = launch_source(|k| tags.iter().find(|(t, _)| *t == k).map(|(_, v)| *v));
            assert_eq!(got.as_ref().map(|s| (s.kind, s.name.as_str())), want, "{tags:?}");
        }
    }

    #[test]
    fn counts_are_per_source_within_the_window_most_first_and_bounded() {
        let mut tally = SourceTally::default();
        let source = |kind: &'static str, name: &str| LaunchSource {
            kind,
            name: name.into(),
        };
        let day = COUNT_WINDOW.as_secs() as i64;
        tally.record(source("NodeGroup", "old"), at(0));
        for t in [day, day + 1, day + 2] {
            tally.record(source("LaunchTemplate", "lt-0a:3"), at(t));
        }
        tally.record(source("EC2NodeClass", "default"), at(day + 5));
        let counts = tally.counts(at(day + 10));
        let got: Vec<(&str, &str, i32)> = counts
            .iter()
            .map(|c| (c.kind.as_str(), c.name.as_str(), c.instances))
            .collect();
        assert_eq!(
            got,
            vec![("LaunchTemplate", "lt-0a:3", 3), ("EC2NodeClass", "default", 1)],
            "old is out of the window"
        );
        for i in 0..(MAX_REPORTED + 5) {
            tally.record(source("AutoScalingGroup", &format!("asg-{i:02}")), at(day + 6));
        }
        assert_eq!(tally.counts(at(day + 10)).len(), MAX_REPORTED);
        assert!(is_new(Some(at(100)), at(100 + 3600)));
        assert!(!is_new(Some(at(100)), at(100 + 3601)));
        assert!(!is_new(None, at(100)));
    }
}
