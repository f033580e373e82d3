//! The Node store: one copy of what the controller keeps of each Node ([`NodeFacts`], labels
//! interned), filled from the Node watch, and the changes that matter to the policies.
//!
//! It replaces a `kube::runtime` reflector store of (stripped) `Node`s plus a change detector
//! that kept a second copy of every Node to compare against: `make bench`'s P4 measured ~15 KB
//! of memory per Node that way. The store itself is the memory the changes are judged against.

use imds_core::labels::Interner;
use imds_core::node::{NodeFacts, SlimNode};
use kube::runtime::watcher::Event;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

/// A node whose facts changed (`gone: false`) or that is gone (`gone: true`).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeChange {
    /// Its facts (the last known ones when it is gone).
    pub node: Arc<NodeFacts>,
    /// Whether it was deleted.
    pub gone: bool,
}

type NodeMap = HashMap<Arc<str>, Arc<NodeFacts>>;

#[derive(Default)]
struct Shared {
    nodes: RwLock<NodeMap>,
    listed: AtomicBool,
    listed_signal: Notify,
}

/// The readers' side: cheap to clone, shared by every reconcile.
#[derive(Clone, Default)]
pub struct NodeStore {
    shared: Arc<Shared>,
}

impl NodeStore {
    /// Waits until the first list of Nodes is complete.
    pub async fn wait_until_listed(&self) {
        loop {
            let signalled = self.shared.listed_signal.notified();
            if self.shared.listed.load(Ordering::Acquire) {
                return;
            }
            signalled.await;
        }
    }

    /// The nodes `keep` accepts (in no particular order).
    pub fn nodes_where(&self, keep: impl Fn(&NodeFacts) -> bool) -> Vec<Arc<NodeFacts>> {
        self.read(|nodes| nodes.values().filter(|n| keep(n)).cloned().collect())
    }

    /// How many nodes the store has.
    pub fn len(&self) -> usize {
        self.read(HashMap::len)
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<T>(&self, f: impl FnOnce(&NodeMap) -> T) -> T {
        // A writer that panicked leaves a map that is still whole (every update is one insert,
        // remove or swap), so a poisoned lock is read through.
        let nodes = self
            .shared
            .nodes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&nodes)
    }

    fn write<T>(&self, f: impl FnOnce(&mut NodeMap) -> T) -> T {
        let mut nodes = self
            .shared
            .nodes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut nodes)
    }
}

/// Deletions between purges of the interner (strings of deleted nodes' labels).
const PURGE_EVERY_DELETES: usize = 256;

/// The watch's side: applies watch events to the store and says what changed.
///
/// A (re-)list is collected aside and swapped in when it completes (`InitDone`), as the kube
/// reflector does; its changes are released at that moment, after the store has the nodes (a
/// reconcile triggered earlier would read the store without them, and the change would be lost:
/// with 5,000 nodes, a Node created during an API server restart went unnoticed until the
/// resync). Nodes deleted while the watch was re-listing produce no Delete event; they are
/// found when the re-list completes. A re-list that fails midway is dropped whole.
pub struct NodeStoreWriter {
    store: NodeStore,
    interner: Interner,
    relisting: Option<NodeMap>,
    deletes_since_purge: usize,
}

impl NodeStoreWriter {
    /// A writer for `store`.
    pub fn new(store: NodeStore) -> NodeStoreWriter {
        NodeStoreWriter {
            store,
            interner: Interner::default(),
            relisting: None,
            deletes_since_purge: 0,
        }
    }

    /// Applies one watch event; returns the changes it brings.
    pub fn on_event(&mut self, event: Event<SlimNode>) -> Vec<NodeChange> {
        match event {
            Event::Init => {
                self.relisting = Some(NodeMap::new());
                Vec::new()
            }
            Event::InitApply(node) => {
                let facts = self.kept(&node);
                if let Some(relisting) = self.relisting.as_mut() {
                    relisting.insert(facts.name.clone(), facts);
                }
                Vec::new()
            }
            Event::InitDone => self.relisted(),
            Event::Apply(node) => self.applied(&node),
            Event::Delete(node) => self.deleted(&node),
        }
    }

    /// The facts of `node` as an `Arc`, the store's own when nothing changed (so an unchanged
    /// node is never held twice).
    fn kept(&mut self, node: &SlimNode) -> Arc<NodeFacts> {
        let facts = node.facts(&mut self.interner);
        match self.store.read(|nodes| nodes.get(&facts.name).cloned()) {
            Some(current) if *current == facts => current,
            _ => Arc::new(facts),
        }
    }

    fn applied(&mut self, node: &SlimNode) -> Vec<NodeChange> {
        let facts = self.kept(node);
        let before = self
            .store
            .write(|nodes| nodes.insert(facts.name.clone(), facts.clone()));
        match before {
            Some(before) if Arc::ptr_eq(&before, &facts) => Vec::new(),
            _ => vec![NodeChange {
                node: facts,
                gone: false,
            }],
        }
    }

    fn deleted(&mut self, node: &SlimNode) -> Vec<NodeChange> {
        let facts = node.facts(&mut self.interner);
        let before = self.store.write(|nodes| nodes.remove(&facts.name));
        self.deletes_since_purge += 1;
        if self.deletes_since_purge >= PURGE_EVERY_DELETES {
            self.purge();
        }
        vec![NodeChange {
            node: before.unwrap_or_else(|| Arc::new(facts)),
            gone: true,
        }]
    }

    fn relisted(&mut self) -> Vec<NodeChange> {
        let Some(listed) = self.relisting.take() else {
            return Vec::new();
        };
        let mut changes: Vec<NodeChange> = self.store.read(|current| {
            let changed = listed
                .values()
                .filter(|n| !current.get(&n.name).is_some_and(|c| Arc::ptr_eq(c, n)))
                .map(|n| NodeChange {
                    node: n.clone(),
                    gone: false,
                });
            let gone = current
                .values()
                .filter(|c| !listed.contains_key(&c.name))
                .map(|c| NodeChange {
                    node: c.clone(),
                    gone: true,
                });
            changed.chain(gone).collect()
        });
        changes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        drop(self.store.write(|nodes| std::mem::replace(nodes, listed)));
        self.purge();
        self.store.shared.listed.store(true, Ordering::Release);
        self.store.shared.listed_signal.notify_waiters();
        changes
    }

    fn purge(&mut self) {
        self.interner.purge();
        self.deletes_since_purge = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str, pool: &str) -> SlimNode {
        SlimNode {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            labels: [("pool".to_string(), pool.to_string())].into(),
            provider_id: Some(format!("aws:///us-east-1a/i-{name}")),
            ready: Some(true),
        }
    }

    fn names(changes: Vec<NodeChange>) -> Vec<(String, bool)> {
        changes.into_iter().map(|c| (c.node.name.to_string(), c.gone)).collect()
    }

    #[test]
    fn the_store_follows_the_watch_and_reports_what_changed() {
        let store = NodeStore::default();
        let mut writer = NodeStoreWriter::new(store.clone());
        assert_eq!(names(writer.on_event(Event::Init)), vec![]);
        // A list's changes come out when it completes, when the store has the nodes.
        assert_eq!(names(writer.on_event(Event::InitApply(named("a", "x")))), vec![]);
        assert_eq!(names(writer.on_event(Event::InitApply(named("b", "x")))), vec![]);
        assert!(store.is_empty(), "not before the list completes");
        assert_eq!(
            names(writer.on_event(Event::InitDone)),
            vec![("a".into(), false), ("b".into(), false)]
        );
        assert_eq!(store.len(), 2);
        assert_eq!(
            names(writer.on_event(Event::Apply(named("a", "x")))),
            vec![],
            "nothing relevant changed"
        );
        assert_eq!(
            names(writer.on_event(Event::Apply(named("a", "y")))),
            vec![("a".into(), false)]
        );
        let a = store.nodes_where(|n| n.name.as_ref() == "a");
        assert_eq!(a[0].labels.get("pool"), Some("y"));
        // A re-list in which b is missing: b was deleted while the watch was down.
        writer.on_event(Event::Init);
        assert_eq!(names(writer.on_event(Event::InitApply(named("a", "y")))), vec![]);
        assert_eq!(names(writer.on_event(Event::InitDone)), vec![("b".into(), true)]);
        assert_eq!(store.len(), 1);
        // A re-list that fails midway (a new Init): what it found waits for the next one.
        writer.on_event(Event::Init);
        assert_eq!(names(writer.on_event(Event::InitApply(named("c", "x")))), vec![]);
        writer.on_event(Event::Init);
        writer.on_event(Event::InitApply(named("a", "y")));
        writer.on_event(Event::InitApply(named("c", "x")));
        assert_eq!(names(writer.on_event(Event::InitDone)), vec![("c".into(), false)]);
        assert_eq!(
            names(writer.on_event(Event::Delete(named("a", "y")))),
            vec![("a".into(), true)]
        );
        assert_eq!(store.nodes_where(|_| true).len(), 1);
    }

    #[test]
    fn an_unchanged_node_is_kept_once_across_a_relist() {
        let store = NodeStore::default();
        let mut writer = NodeStoreWriter::new(store.clone());
        writer.on_event(Event::Init);
        writer.on_event(Event::InitApply(named("a", "x")));
        writer.on_event(Event::InitDone);
        let before = store.nodes_where(|_| true).remove(0);
        writer.on_event(Event::Init);
        writer.on_event(Event::InitApply(named("a", "x")));
        writer.on_event(Event::InitDone);
        let after = store.nodes_where(|_| true).remove(0);
        assert!(Arc::ptr_eq(&before, &after), "the re-listed node is the stored one");
    }

    #[tokio::test]
    async fn readers_wait_for_the_first_list() {
        let store = NodeStore::default();
        let mut writer = NodeStoreWriter::new(store.clone());
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.wait_until_listed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        writer.on_event(Event::Init);
        writer.on_event(Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("released by the list")
            .expect("joins");
    }
}
