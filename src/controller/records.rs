//! Where the operator keeps what it changed ([`imds_core::record`]): ConfigMaps in its own
//! namespace, which only the operator's ServiceAccount may write (RBAC on those names), never on
//! the instance where anyone with `ec2:CreateTags` could forge a record.
//!
//! The instances are spread over [`SHARDS`] ConfigMaps `<prefix>-records-<00..0f>` by a hash of
//! the instance id, one data key per instance (a JSON record of a few hundred bytes): 5,000
//! instances take about 1.5 MB, under 120 kB per ConfigMap (the API server's limit is 1 MiB).
//! The leader loads every shard before it sends anything and then keeps the copy in memory; a
//! record is in memory only after its write succeeded. Writes replace a shard with its
//! resourceVersion, so a concurrent writer (a deposed leader) fails instead of losing records.

use imds_core::record::{InstanceRecord, InvalidRecord};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio::sync::Mutex;

/// How many ConfigMaps hold the records.
pub const SHARDS: usize = 16;
/// Tries of one shard write when another writer changed it in between.
const CONFLICT_RETRIES: usize = 3;

/// The name of shard `index` for `prefix`.
pub fn shard_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-records-{index:02x}")
}

/// The shard of an instance (FNV-1a: stable across versions and platforms).
pub fn shard_of(instance_id: &str) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in instance_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as usize % SHARDS
}

#[derive(Debug, Default, Clone)]
struct Shard {
    /// The resourceVersion of the ConfigMap as last read or written (`None`: it does not exist).
    resource_version: Option<String>,
    /// Instance id → its record, parsed once when read (every reconcile reads the records of
    /// all its instances several times).
    entries: BTreeMap<String, Stored>,
}

/// One stored record.
#[derive(Debug, Clone)]
enum Stored {
    Valid(InstanceRecord),
    /// Kept as written (it is never applied, and a write of its shard leaves it as it was).
    Invalid {
        text: String,
        why: InvalidRecord,
    },
}

impl Stored {
    fn parse(id: &str, text: String) -> Stored {
        match InstanceRecord::parse(id, &text) {
            Ok(record) => Stored::Valid(record),
            Err(why) => Stored::Invalid { text, why },
        }
    }

    fn record(&self) -> Result<&InstanceRecord, &InvalidRecord> {
        match self {
            Stored::Valid(record) => Ok(record),
            Stored::Invalid { why, .. } => Err(why),
        }
    }

    /// The ConfigMap value.
    fn text(&self) -> String {
        match self {
            Stored::Valid(record) => record.to_json(),
            Stored::Invalid { text, .. } => text.clone(),
        }
    }
}

/// What a write achieved.
#[derive(Debug, Default)]
pub struct Written {
    /// The instances whose records are stored now.
    pub ids: HashSet<String>,
    /// Why the others are not.
    pub error: Option<String>,
}

/// The records, in memory and in the ConfigMaps.
pub struct RecordStore {
    api: Api<ConfigMap>,
    prefix: String,
    /// One lock per shard: writes to different shards go out at once.
    shards: Vec<Mutex<Shard>>,
}

impl RecordStore {
    /// Reads every shard.
    pub async fn load(client: kube::Client, namespace: &str, prefix: &str) -> Result<RecordStore, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let mut shards = Vec::with_capacity(SHARDS);
        for index in 0..SHARDS {
            shards.push(read_shard(&api, &shard_name(prefix, index)).await?);
        }
        let count: usize = shards.iter().map(|s| s.entries.len()).sum();
        tracing::info!(%namespace, %prefix, instances = count, "records loaded");
        Ok(RecordStore {
            api,
            prefix: prefix.to_string(),
            shards: shards.into_iter().map(Mutex::new).collect(),
        })
    }

    /// The record of each instance (empty when none is stored), or why it cannot be used.
    pub async fn get_many<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> HashMap<String, Result<InstanceRecord, InvalidRecord>> {
        self.collect_stored(ids, |stored| {
            Some(match stored {
                Some(stored) => stored.record().cloned().map_err(Clone::clone),
                None => Ok(InstanceRecord::default()),
            })
        })
        .await
    }

    /// The valid stored records of `ids` that `keep` accepts (an instance with no record, or
    /// an invalid one, is absent: an invalid record is reported where it would be used).
    pub async fn valid_where<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
        keep: impl Fn(&InstanceRecord) -> bool,
    ) -> HashMap<String, InstanceRecord> {
        self.collect_stored(ids, |stored| match stored {
            Some(Stored::Valid(record)) if keep(record) => Some(record.clone()),
            _ => None,
        })
        .await
    }

    /// What `pick` makes of each instance's stored record (`None`: none stored), shard by shard
    /// under its lock; instances it answers `None` for are left out.
    async fn collect_stored<'a, T>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
        pick: impl Fn(Option<&Stored>) -> Option<T>,
    ) -> HashMap<String, T> {
        let mut out = HashMap::new();
        for (index, ids) in by_shard(ids) {
            let shard = self.shards[index].lock().await;
            for id in ids {
                if let Some(value) = pick(shard.entries.get(id)) {
                    out.insert(id.clone(), value);
                }
            }
        }
        out
    }

    /// The record of one instance.
    pub async fn get(&self, id: &str) -> Result<InstanceRecord, InvalidRecord> {
        let id = id.to_string();
        self.get_many([&id])
            .await
            .remove(&id)
            .unwrap_or_else(|| Ok(InstanceRecord::default()))
    }

    /// Stores records (an empty one removes the instance's key), one write per shard touched.
    pub async fn put(&self, updates: Vec<(String, InstanceRecord)>) -> Written {
        let mut by_shard: BTreeMap<usize, Vec<(String, InstanceRecord)>> = BTreeMap::new();
        for (id, record) in updates {
            by_shard.entry(shard_of(&id)).or_default().push((id, record));
        }
        let writes = by_shard.into_iter().map(|(index, updates)| async move {
            let mut shard = self.shards[index].lock().await;
            (index, self.write_shard(&mut shard, index, &|_| updates.clone()).await)
        });
        self.collect(futures::future::join_all(writes).await)
    }

    /// Changes the records of `ids` atomically with respect to every other read and write of
    /// the store: `change` sees the current valid record and answers the new one (`None`: leave
    /// it). Invalid records are left alone. When another writer changed a shard meanwhile,
    /// `change` runs again on what it wrote.
    pub async fn update(
        &self,
        ids: &[String],
        change: impl Fn(&str, &InstanceRecord) -> Option<InstanceRecord> + Sync,
    ) -> Written {
        let change = &change;
        let writes = by_shard(ids).into_iter().map(|(index, ids)| async move {
            let compute = |shard: &Shard| -> Vec<(String, InstanceRecord)> {
                ids.iter()
                    .filter_map(|id| {
                        let current = match shard.entries.get(*id) {
                            Some(Stored::Valid(record)) => record.clone(),
                            Some(Stored::Invalid { .. }) => return None,
                            None => InstanceRecord::default(),
                        };
                        let next = change(id, &current).filter(|next| *next != current)?;
                        Some(((*id).clone(), next))
                    })
                    .collect()
            };
            let mut shard = self.shards[index].lock().await;
            (index, self.write_shard(&mut shard, index, &compute).await)
        });
        self.collect(futures::future::join_all(writes).await)
    }

    /// The instances written by every shard's write, and the last error.
    fn collect(&self, results: Vec<(usize, Result<Vec<String>, kube::Error>)>) -> Written {
        let mut written = Written::default();
        for (index, result) in results {
            self.note(&mut written, index, result);
        }
        written
    }

    fn note(&self, written: &mut Written, index: usize, result: Result<Vec<String>, kube::Error>) {
        match result {
            Ok(ids) => written.ids.extend(ids),
            Err(e) => {
                let name = shard_name(&self.prefix, index);
                tracing::warn!(shard = %name, error = %e, "could not write records");
                written.error = Some(format!("writing {name}: {e}"));
            }
        }
    }

    /// Writes what `compute` makes of the shard; on a conflict (another writer) or a vanished
    /// ConfigMap the shard is read again and `compute` runs again on it. The instances written.
    async fn write_shard(
        &self,
        shard: &mut Shard,
        index: usize,
        compute: &(dyn Fn(&Shard) -> Vec<(String, InstanceRecord)> + Sync),
    ) -> Result<Vec<String>, kube::Error> {
        let name = shard_name(&self.prefix, index);
        for attempt in 0..CONFLICT_RETRIES {
            let updates = compute(shard);
            if updates.is_empty() {
                return Ok(Vec::new());
            }
            let mut next = shard.clone();
            for (id, record) in &updates {
                if record.is_empty() {
                    next.entries.remove(id);
                } else {
                    next.entries.insert(id.clone(), Stored::Valid(record.clone()));
                }
            }
            match self.send_shard(&name, &next).await {
                Ok(resource_version) => {
                    next.resource_version = resource_version;
                    *shard = next;
                    return Ok(updates.into_iter().map(|(id, _)| id).collect());
                }
                Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) && attempt + 1 < CONFLICT_RETRIES => {
                    tracing::warn!(shard = %name, code = e.code, "records changed by another writer; re-reading");
                    *shard = read_shard(&self.api, &name).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(kube::Error::Service("conflict retries exhausted".into()))
    }

    /// Creates or replaces the ConfigMap; its new resourceVersion.
    async fn send_shard(&self, name: &str, shard: &Shard) -> Result<Option<String>, kube::Error> {
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                resource_version: shard.resource_version.clone(),
                labels: Some(
                    [
                        ("app.kubernetes.io/managed-by".to_string(), "imds-operator".to_string()),
                        ("imds-operator.io/records".to_string(), "true".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(shard.entries.iter().map(|(id, s)| (id.clone(), s.text())).collect()),
            ..Default::default()
        };
        let stored = match shard.resource_version {
            Some(_) => self.api.replace(name, &PostParams::default(), &object).await?,
            None => self.api.create(&PostParams::default(), &object).await?,
        };
        Ok(stored.metadata.resource_version)
    }
}

/// `ids` grouped by their shard.
fn by_shard<'a>(ids: impl IntoIterator<Item = &'a String>) -> BTreeMap<usize, Vec<&'a String>> {
    let mut grouped: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
    for id in ids {
        grouped.entry(shard_of(id)).or_default().push(id);
    }
    grouped
}

async fn read_shard(api: &Api<ConfigMap>, name: &str) -> Result<Shard, kube::Error> {
    Ok(match api.get_opt(name).await? {
        Some(cm) => Shard {
            resource_version: cm.metadata.resource_version,
            entries: cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(id, text)| {
                    let stored = Stored::parse(&id, text);
                    (id, stored)
                })
                .collect(),
        },
        None => Shard::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_name("imds-operator", 10), "imds-operator-records-0a");
        assert_eq!(shard_of("i-0123456789abcdef0"), shard_of("i-0123456789abcdef0"));
        let mut counts = [0usize; SHARDS];
        for n in 0..5000 {
            counts[shard_of(&format!("i-{n:017x}"))] += 1;
        }
        // 5,000 instances: every shard gets some, none more than twice its share.
        assert!(counts.iter().all(|c| *c > 0 && *c < 2 * 5000 / SHARDS), "{counts:?}");
    }
}
