//! Turns the Node watch into the changes that matter to the policies.

use imds_core::node::relevance_hash;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use std::collections::{HashMap, HashSet};

/// Turns the Node watch into the changes that matter: a node whose labels, providerID or
/// readiness changed (`false`), or that is gone (`true`). Nodes deleted while the watch was
/// re-listing produce no Delete event; they are found when the re-list completes.
///
/// The changes a (re-)list brings are released only when it completes (`InitDone`): the
/// reflector's store takes the listed nodes at that moment, and a reconcile triggered earlier
/// would read the store without them — and the change would be lost, since it is already
/// `seen`. (Measured: with 5,000 nodes, a Node created during an API server restart went
/// unnoticed until the resync.) Changes of a re-list that fails midway wait for the next one.
#[derive(Debug, Default)]
pub struct NodeChanges {
    seen: HashMap<String, (u64, Node)>,
    relisted: Option<HashSet<String>>,
    listed: Vec<(Node, bool)>,
}

impl NodeChanges {
    /// The changes one watch event brings.
    pub fn on_event(&mut self, event: kube::runtime::watcher::Event<Node>) -> Vec<(Node, bool)> {
        use kube::runtime::watcher::Event;
        match event {
            Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(node) => {
                if let Some(relisted) = self.relisted.as_mut() {
                    relisted.insert(node.name_any());
                }
                let changed = self.applied(node);
                self.listed.extend(changed);
                Vec::new()
            }
            Event::Apply(node) => self.applied(node),
            Event::InitDone => {
                let mut changes = std::mem::take(&mut self.listed);
                let Some(relisted) = self.relisted.take() else {
                    return changes;
                };
                let gone: Vec<String> = self.seen.keys().filter(|n| !relisted.contains(*n)).cloned().collect();
                changes.extend(
                    gone.into_iter()
                        .filter_map(|name| self.seen.remove(&name).map(|(_, node)| (node, true))),
                );
                changes
            }
            Event::Delete(node) => {
                self.seen.remove(&node.name_any());
                vec![(node, true)]
            }
        }
    }

    fn applied(&mut self, node: Node) -> Vec<(Node, bool)> {
        let hash = relevance_hash(&node);
        let before = self.seen.insert(node.name_any(), (hash, node.clone()));
        if before.map(|(h, _)| h) == Some(hash) {
            Vec::new()
        } else {
            vec![(node, false)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_core::fixtures::big_node;
    use imds_core::node::strip;

    fn named(name: &str, pool: &str) -> Node {
        let mut node = big_node();
        node.metadata.name = Some(name.into());
        node.labels_mut().insert("pool".into(), pool.into());
        strip(&mut node);
        node
    }

    #[test]
    fn node_changes_follow_the_watch() {
        use kube::runtime::watcher::Event;
        let mut changes = NodeChanges::default();
        let names = |v: Vec<(Node, bool)>| v.into_iter().map(|(n, gone)| (n.name_any(), gone)).collect::<Vec<_>>();
        assert_eq!(names(changes.on_event(Event::Init)), vec![]);
        // A list's changes come out when it completes (when the store has the nodes).
        assert_eq!(names(changes.on_event(Event::InitApply(named("a", "x")))), vec![]);
        assert_eq!(names(changes.on_event(Event::InitApply(named("b", "x")))), vec![]);
        assert_eq!(
            names(changes.on_event(Event::InitDone)),
            vec![("a".into(), false), ("b".into(), false)]
        );
        assert_eq!(
            names(changes.on_event(Event::Apply(named("a", "x")))),
            vec![],
            "nothing relevant changed"
        );
        assert_eq!(
            names(changes.on_event(Event::Apply(named("a", "y")))),
            vec![("a".into(), false)]
        );
        // A re-list in which b is missing: b was deleted while the watch was down.
        changes.on_event(Event::Init);
        assert_eq!(names(changes.on_event(Event::InitApply(named("a", "y")))), vec![]);
        assert_eq!(names(changes.on_event(Event::InitDone)), vec![("b".into(), true)]);
        // A re-list that fails midway (a new Init): what it found waits for the next one.
        changes.on_event(Event::Init);
        assert_eq!(names(changes.on_event(Event::InitApply(named("c", "x")))), vec![]);
        changes.on_event(Event::Init);
        changes.on_event(Event::InitApply(named("a", "y")));
        changes.on_event(Event::InitApply(named("c", "x")));
        assert_eq!(names(changes.on_event(Event::InitDone)), vec![("c".into(), false)]);
        assert_eq!(
            names(changes.on_event(Event::Delete(named("a", "y")))),
            vec![("a".into(), true)]
        );
    }
}
