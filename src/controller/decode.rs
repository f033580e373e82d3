//! Policies are watched as untyped objects and decoded one by one, so that a policy this
//! version cannot read (a field or value from a newer CRD, after an upgrade or a rollback) is
//! reported on that policy and skipped, instead of failing the whole watch — a typed list fails
//! as a whole on one bad item, and every other policy would stop.

use imds_core::api::InstanceMetadataPolicy;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use std::collections::HashMap;

/// A policy that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// The policy's name.
    pub name: String,
    /// Its UID (for the Event).
    pub uid: Option<String>,
    /// Its generation.
    pub generation: i64,
    /// What serde said.
    pub error: String,
}

/// Decodes watch events, remembering the last good version of each policy so that a policy
/// that stops decoding leaves the store (as a delete) instead of staying in it as it was.
#[derive(Debug, Default)]
pub struct PolicyDecoder {
    last_good: HashMap<String, InstanceMetadataPolicy>,
}

/// One untyped object as a policy.
pub fn decode(object: &DynamicObject) -> Result<InstanceMetadataPolicy, Undecodable> {
    let undecodable = |error: String| Undecodable {
        name: object.metadata.name.clone().unwrap_or_default(),
        uid: object.metadata.uid.clone(),
        generation: object.metadata.generation.unwrap_or_default(),
        error,
    };
    let value = serde_json::to_value(object).map_err(|e| undecodable(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| undecodable(e.to_string()))
}

impl PolicyDecoder {
    /// The typed event(s) for one untyped event, and the policies that did not decode.
    pub fn on_event(&mut self, event: Event<DynamicObject>) -> (Vec<Event<InstanceMetadataPolicy>>, Vec<Undecodable>) {
        let mut bad = Vec::new();
        let events = match event {
            Event::Init => vec![Event::Init],
            Event::InitDone => vec![Event::InitDone],
            Event::InitApply(object) => match self.good(&object, &mut bad) {
                Some(policy) => vec![Event::InitApply(policy)],
                None => Vec::new(),
            },
            Event::Apply(object) => match self.good(&object, &mut bad) {
                Some(policy) => vec![Event::Apply(policy)],
                // It decoded before: drop the old version from the store.
                None => self.forget(&object).map(Event::Delete).into_iter().collect(),
            },
            Event::Delete(object) => match decode(&object) {
                Ok(policy) => {
                    self.last_good.remove(&policy_name(&object));
                    vec![Event::Delete(policy)]
                }
                Err(_) => self.forget(&object).map(Event::Delete).into_iter().collect(),
            },
        };
        (events, bad)
    }

    fn good(&mut self, object: &DynamicObject, bad: &mut Vec<Undecodable>) -> Option<InstanceMetadataPolicy> {
        match decode(object) {
            Ok(policy) => {
                self.last_good.insert(policy_name(object), policy.clone());
                Some(policy)
            }
            Err(e) => {
                bad.push(e);
                None
            }
        }
    }

    fn forget(&mut self, object: &DynamicObject) -> Option<InstanceMetadataPolicy> {
        self.last_good.remove(&policy_name(object))
    }
}

fn policy_name(object: &DynamicObject) -> String {
    object.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str, mode: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "imds-operator.io/v1alpha1",
            "kind": "InstanceMetadataPolicy",
            "metadata": {"name": name, "generation": 3},
            "spec": {"mode": mode, "nodeSelector": {}, "metadataOptions": {"httpTokens": "required"}},
        }))
        .expect("an object")
    }

    fn names(events: &[Event<InstanceMetadataPolicy>]) -> Vec<String> {
        use kube::ResourceExt;
        events
            .iter()
            .map(|e| match e {
                Event::Apply(p) => format!("apply {}", p.name_any()),
                Event::InitApply(p) => format!("init-apply {}", p.name_any()),
                Event::Delete(p) => format!("delete {}", p.name_any()),
                Event::Init => "init".into(),
                Event::InitDone => "init-done".into(),
            })
            .collect()
    }

    #[test]
    fn a_policy_that_does_not_decode_is_skipped_and_reported_and_the_others_go_on() {
        let mut decoder = PolicyDecoder::default();
        let (events, bad) = decoder.on_event(Event::InitApply(object("good", "Enforce")));
        assert_eq!(names(&events), ["init-apply good"]);
        assert!(bad.is_empty());
        let (events, bad) = decoder.on_event(Event::InitApply(object("newer", "Verify")));
        assert!(events.is_empty());
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].name.as_str(), bad[0].generation), ("newer", 3));
        assert!(bad[0].error.contains("Verify"), "{}", bad[0].error);
        let (events, _) = decoder.on_event(Event::InitDone);
        assert_eq!(names(&events), ["init-done"]);
    }

    #[test]
    fn a_policy_that_stops_decoding_leaves_the_store() {
        let mut decoder = PolicyDecoder::default();
        decoder.on_event(Event::Apply(object("p", "Enforce")));
        let (events, bad) = decoder.on_event(Event::Apply(object("p", "Verify")));
        assert_eq!(names(&events), ["delete p"], "the old version is forgotten");
        assert_eq!(bad.len(), 1);
        let (events, _) = decoder.on_event(Event::Delete(object("p", "Verify")));
        assert!(events.is_empty(), "already gone");
        let (events, _) = decoder.on_event(Event::Apply(object("q", "Audit")));
        assert_eq!(names(&events), ["apply q"]);
        let (events, _) = decoder.on_event(Event::Delete(object("q", "Audit")));
        assert_eq!(names(&events), ["delete q"]);
    }
}
