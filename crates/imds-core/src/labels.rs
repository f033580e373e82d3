//! Node labels as the controller keeps them, and label selectors that match them.
//!
//! An EKS worker carries ~30 labels whose keys (`topology.kubernetes.io/zone`,
//! `node.kubernetes.io/instance-type`, …) and most values (the zone, the node group) are the same
//! on thousands of nodes. [`Labels`] is an immutable, sorted, shared slice of interned strings:
//! cloning it is one reference count, and an [`Interner`] makes every node with the same key or
//! value point at one copy of it — and every node with the same label (key and value) at one
//! copy of the pair, so a label costs a node one pointer. (Measured in `make bench`'s P4: kept
//! as `BTreeMap<String, String>`, the labels were most of the ~15 KB each Node cost the operator.)

use kube_core::{Expression, Selector};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// Anything labels can be looked up in.
pub trait LabelLookup {
    /// The value of the label `key`, if the set has it.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// One label, key and value.
type Label = Arc<(Arc<str>, Arc<str>)>;

/// A node's labels: sorted by key, immutable, cheap to clone.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[Label]>);

impl Labels {
    /// Labels from key/value pairs (a later duplicate key wins, as in a map).
    fn from_pairs(mut pairs: Vec<Label>) -> Labels {
        // Stable sort, then keep the last of equal keys.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<Label> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match unique.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => unique.push(pair),
            }
        }
        Labels(unique.into())
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|label| label.0.as_ref().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|label| (label.0.as_ref(), label.1.as_ref()))
    }

    /// How many labels there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a map (for output and tests).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Sets one label (for tests and fixtures; the controller never edits labels).
    pub fn insert(&mut self, key: &str, value: &str) {
        let mut pairs = self.0.to_vec();
        pairs.push(Arc::new((key.into(), value.into())));
        *self = Labels::from_pairs(pairs);
    }
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Labels {
        Labels(
            map.iter()
                .map(|(k, v)| Arc::new((Arc::from(k.as_str()), Arc::from(v.as_str()))))
                .collect(),
        )
    }
}

/// One shared copy of every label, label key and value in use.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    labels: HashSet<Label>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    /// Labels made of the shared copies.
    pub fn labels<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
        let pairs = pairs.into_iter().map(|(k, v)| self.label(k, v)).collect();
        Labels::from_pairs(pairs)
    }

    fn label(&mut self, key: &str, value: &str) -> Label {
        let pair = (self.intern(key), self.intern(value));
        if let Some(shared) = self.labels.get(&pair) {
            return shared.clone();
        }
        let shared = Arc::new(pair);
        self.labels.insert(shared.clone());
        shared
    }

    /// Forgets what nothing but the interner uses any more (labels of deleted nodes).
    pub fn purge(&mut self) {
        self.labels.retain(|l| Arc::strong_count(l) > 1);
        self.labels.shrink_to_fit();
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.strings.shrink_to_fit();
    }

    /// How many strings are shared.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

/// A parsed `spec.nodeSelector`: every expression must match. Matches [`Labels`] and maps alike,
/// with the semantics of Kubernetes' label selectors (and of `kube_core::Selector`, which parses
/// it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSelector(Vec<Expression>);

impl NodeSelector {
    /// Whether labels `labels` satisfy every expression.
    pub fn matches(&self, labels: &impl LabelLookup) -> bool {
        self.0.iter().all(|e| expression_matches(e, labels))
    }
}

fn expression_matches(expression: &Expression, labels: &impl LabelLookup) -> bool {
    match expression {
        Expression::In(key, values) => labels.label(key).is_some_and(|v| values.contains(v)),
        Expression::NotIn(key, values) => labels.label(key).is_none_or(|v| !values.contains(v)),
        Expression::Exists(key) => labels.label(key).is_some(),
        Expression::DoesNotExist(key) => labels.label(key).is_none(),
        Expression::Equal(key, value) => labels.label(key) == Some(value.as_str()),
        Expression::NotEqual(key, value) => labels.label(key) != Some(value.as_str()),
    }
}

impl From<Selector> for NodeSelector {
    fn from(selector: Selector) -> NodeSelector {
        NodeSelector(selector.into_iter().collect())
    }
}

impl FromIterator<(&'static str, &'static str)> for NodeSelector {
    fn from_iter<T: IntoIterator<Item = (&'static str, &'static str)>>(iter: T) -> NodeSelector {
        NodeSelector::from(iter.into_iter().collect::<Selector>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_the_last_duplicate_wins() {
        let labels = Labels::from_pairs(vec![
            Arc::new(("b".into(), "1".into())),
            Arc::new(("a".into(), "2".into())),
            Arc::new(("b".into(), "3".into())),
        ]);
        assert_eq!(labels.iter().collect::<Vec<_>>(), vec![("a", "2"), ("b", "3")]);
        assert_eq!(labels.get("b"), Some("3"));
        assert_eq!(labels.get("c"), None);
        assert_eq!(format!("{labels:?}"), r#"{"a": "2", "b": "3"}"#);
    }

    #[test]
    fn interned_labels_share_one_copy_and_purge_forgets_unused_ones() {
        let mut interner = Interner::default();
        let one = interner.labels([("zone", "a"), ("host", "n1")]);
        let two = interner.labels([("zone", "a"), ("host", "n2")]);
        assert_eq!(interner.len(), 5, "zone, a, host, n1, n2: {interner:?}");
        let zone = |l: &Labels| l.0.iter().find(|l| l.0.as_ref() == "zone").cloned();
        assert!(
            Arc::ptr_eq(&zone(&one).expect("zone"), &zone(&two).expect("zone")),
            "one copy of zone=a"
        );
        drop(two);
        interner.purge();
        assert_eq!(interner.len(), 4, "n2 is gone");
        assert_eq!(
            one.to_map(),
            BTreeMap::from([("host".into(), "n1".into()), ("zone".into(), "a".into())])
        );
    }

    #[test]
    fn node_selector_matches_like_kube_core() {
        use kube_core::SelectorExt;
        let map: BTreeMap<String, String> = [
            ("pool".to_string(), "a".to_string()),
            ("gpu".to_string(), "yes".to_string()),
        ]
        .into();
        let labels = Labels::from(&map);
        let selectors: Vec<Selector> = vec![
            Selector::default(),
            Expression::Equal("pool".into(), "a".into()).into(),
            Expression::NotEqual("pool".into(), "a".into()).into(),
            Expression::In("pool".into(), ["a".into(), "b".into()].into()).into(),
            Expression::NotIn("pool".into(), ["b".into()].into()).into(),
            Expression::NotIn("zone".into(), ["b".into()].into()).into(),
            Expression::In("zone".into(), ["b".into()].into()).into(),
            Expression::Exists("gpu".into()).into(),
            Expression::DoesNotExist("gpu".into()).into(),
            [
                Expression::Exists("gpu".into()),
                Expression::Equal("pool".into(), "b".into()),
            ]
            .into_iter()
            .collect(),
        ];
        for selector in selectors {
            let ours = NodeSelector::from(selector.clone());
            assert_eq!(ours.matches(&labels), selector.matches(&map), "{selector}");
            assert_eq!(ours.matches(&map), selector.matches(&map), "{selector}");
        }
    }
}
