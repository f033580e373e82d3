//! DescribeInstances: the instances a refresh asks for, by ID in batches of 200, or — when the
//! cluster's tag is known and that takes fewer calls — by listing the cluster's instances
//! (filtered by its `kubernetes.io/cluster/<name>` tag key, 1,000 per page) and reading by ID only
//! those the listing did not show. The tag is given (`--cluster-name`) or learnt: when every
//! instance a call by ID found carries the same single cluster tag. A wrong or stale tag costs
//! calls, never answers: whatever the listing does not show is read by ID.

pub use super::describe_answer::InstanceFacts;
use super::describe_answer::{LeanDescribeAnswers, LeanPage};
use super::ec2::{ClusterListing, Ec2};
use super::error::{AwsError, AwsErrorKind, Service, from_sdk};
use aws_sdk_ec2::types::Filter;
use imds_core::launch_source::LaunchSource;
use imds_core::observation::{Failure, Observation};
use k8s_openapi::jiff::Timestamp;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

/// At most this many values in one `instance-id` filter (EC2 rejects more than 200).
pub const DESCRIBE_BATCH: usize = 200;
/// Page size of DescribeInstances (EC2's largest).
const PAGE_SIZE: i32 = 1000;

/// One instance as read by [`Ec2::describe_instances`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// Found, not found, or the batch's error.
    pub observation: Observation,
    /// Tag keys (empty unless found).
    pub tag_keys: Vec<String>,
    /// `LaunchTime` (unless not found).
    pub launched: Option<Timestamp>,
    /// Where it was launched from (see [`InstanceFacts::launch_source`]).
    pub launch_source: Option<LaunchSource>,
}

impl Described {
    fn found(facts: InstanceFacts) -> Described {
        Described {
            observation: Observation::Found(facts.options),
            tag_keys: facts.tag_keys,
            launched: facts.launched,
            launch_source: facts.launch_source,
        }
    }

    fn without_facts(observation: Observation) -> Described {
        Described {
            observation,
            tag_keys: Vec::new(),
            launched: None,
            launch_source: None,
        }
    }

    fn failed(failure: &Failure) -> Described {
        Described::without_facts(Observation::Failed(failure.clone()))
    }
}

/// The tag key to list the cluster by, when one is known and listing reads `wanted` instances
/// in fewer calls than asking for them by ID: ⌈wanted/200⌉ by ID against the pages the last
/// listing took (at least one; before the first listing, whenever by ID takes more than one call).
fn listing_key(listing: &ClusterListing, wanted: usize) -> Option<String> {
    let pays = wanted.div_ceil(DESCRIBE_BATCH) > listing.last_pages.load(Ordering::Relaxed).max(1);
    if !pays {
        return None;
    }
    listing
        .tag_key
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Learns the cluster's tag key from the instances one call by ID found, unless it was given.
fn learn_tag_key(listing: &ClusterListing, seen: ClusterTagsSeen) {
    let Some(key) = seen.agreed() else {
        return;
    };
    if listing.given {
        return;
    }
    let mut current = listing.tag_key.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if current.as_deref() != Some(key.as_str()) {
        tracing::info!(tag = %key, "the instances carry one cluster tag: large reads list the cluster's instances by it");
        *current = Some(key);
    }
}

/// The cluster tags of the instances a read found (terminated ones aside).
#[derive(Debug, Default)]
struct ClusterTagsSeen {
    key: Option<String>,
    found: usize,
    mixed: bool,
}

impl ClusterTagsSeen {
    fn saw(&mut self, key: Option<&str>) {
        self.mixed |= match (key, self.key.as_deref()) {
            (Some(k), None) if self.found == 0 => {
                self.key = Some(k.to_string());
                false
            }
            (Some(k), Some(current)) => k != current,
            _ => true,
        };
        self.found += 1;
    }

    /// The tag every instance found carries (none when one lacks it or carries another).
    fn agreed(self) -> Option<String> {
        self.key.filter(|_| !self.mixed)
    }
}

impl Ec2 {
    /// Reads the instances: ⌈N/200⌉ calls for N instances by ID (plus one per extra page), or,
    /// with the cluster's tag (given by [`Ec2::with_cluster_listing`], or learnt from an earlier
    /// read by ID) when it takes fewer calls, ⌈M/1000⌉
    /// for the M instances carrying the cluster's tag plus ⌈K/200⌉ for the K asked for that the
    /// listing did not show. Every requested ID gets an observation: found, not found (absent
    /// or terminated), or the error of the call that was to read it.
    pub async fn describe(&self, instance_ids: &[String]) -> HashMap<String, (Observation, Vec<String>)> {
        self.describe_instances(instance_ids)
            .await
            .into_iter()
            .map(|(id, d)| (id, (d.observation, d.tag_keys)))
            .collect()
    }

    /// Like [`Ec2::describe`], as [`Described`] values.
    pub async fn describe_instances(&self, instance_ids: &[String]) -> HashMap<String, Described> {
        let mut out = HashMap::with_capacity(instance_ids.len());
        let mut ids: Vec<String> = instance_ids.to_vec();
        ids.sort();
        ids.dedup();
        let listing = listing_key(&self.listing, ids.len());
        if let Some(tag_key) = &listing {
            self.describe_listed(tag_key, &ids, &mut out).await;
            ids.retain(|id| !out.contains_key(id));
        }
        // What the listing did not show is no sample of the cluster: nothing is learnt from it.
        let learn = listing.is_none();
        for chunk in ids.chunks(DESCRIBE_BATCH) {
            self.describe_chunk(chunk, learn, &mut out).await;
        }
        out
    }

    /// Reads `chunk` (at most [`DESCRIBE_BATCH`] IDs) into `out`; with `learn`, learns the
    /// cluster's tag from the instances found.
    async fn describe_chunk(&self, chunk: &[String], learn: bool, out: &mut HashMap<String, Described>) {
        let filter = Filter::builder()
            .name("instance-id")
            .set_values(Some(chunk.to_vec()))
            .build();
        let wanted: HashSet<&str> = chunk.iter().map(String::as_str).collect();
        match self.read_pages(filter, &wanted, out).await {
            Ok((_, seen)) if learn => learn_tag_key(&self.listing, seen),
            Ok(_) => {}
            Err(err) => {
                let failure = err.to_failure();
                for id in chunk {
                    out.insert(id.clone(), Described::failed(&failure));
                }
                return;
            }
        }
        for id in chunk {
            out.entry(id.clone())
                .or_insert_with(|| Described::without_facts(Observation::NotFound));
        }
    }

    /// Lists the cluster's instances into `out`, keeping those of `ids`; the ones it does not
    /// show are left out (the caller reads them by ID). A failed page fails every ID not read yet.
    async fn describe_listed(&self, tag_key: &str, ids: &[String], out: &mut HashMap<String, Described>) {
        let filter = Filter::builder().name("tag-key").values(tag_key).build();
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        match self.read_pages(filter, &wanted, out).await {
            Ok((pages, _)) => self.listing.last_pages.store(pages, Ordering::Relaxed),
            Err(err) => {
                let failure = err.to_failure();
                for id in ids {
                    out.entry(id.clone()).or_insert_with(|| Described::failed(&failure));
                }
            }
        }
    }

    /// Reads every page `filter` selects, keeping the `wanted` instances in `out` (a terminated
    /// one as not found). Returns how many pages there were and the cluster tags of the
    /// instances kept.
    async fn read_pages(
        &self,
        filter: Filter,
        wanted: &HashSet<&str>,
        out: &mut HashMap<String, Described>,
    ) -> Result<(usize, ClusterTagsSeen), AwsError> {
        let mut next_token: Option<String> = None;
        let mut pages = 0;
        let mut seen = ClusterTagsSeen::default();
        loop {
            let page = self.describe_page(filter.clone(), next_token.take()).await?;
            pages += 1;
            for listed in page.instances {
                if wanted.contains(listed.instance_id.as_str()) {
                    if listed.facts.is_some() {
                        seen.saw(listed.cluster_tag_key.as_deref());
                    }
                    let described = listed
                        .facts
                        .map_or_else(|| Described::without_facts(Observation::NotFound), Described::found);
                    out.insert(listed.instance_id, described);
                }
            }
            match page.next_token {
                Some(token) if !token.is_empty() => next_token = Some(token),
                _ => return Ok((pages, seen)),
            }
        }
    }

    /// One DescribeInstances call (rate-limited, counted), its answer read by the lean reader.
    async fn describe_page(&self, filter: Filter, next_token: Option<String>) -> Result<LeanPage, AwsError> {
        self.describe_limit.acquire().await;
        let lean = LeanDescribeAnswers::default();
        let result = self
            .client
            .describe_instances()
            .filters(filter)
            .max_results(PAGE_SIZE)
            .set_next_token(next_token)
            .customize()
            .interceptor(lean.clone())
            .send()
            .await
            .map_err(|e| from_sdk(Service::Ec2, "DescribeInstances", e));
        self.record("DescribeInstances", &self.describe_limit, &result).await;
        result?;
        // A successful call was read by the lean deserializer, which left its page.
        lean.take_page().ok_or_else(|| {
            AwsError::new(
                "DescribeInstances",
                AwsErrorKind::Other,
                "LeanPageMissing",
                "the DescribeInstances answer was not read".to_string(),
            )
        })
    }
}
