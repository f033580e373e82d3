//! What the server and the test share: the simulated instances, the knobs, the request log.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use imds_core::options::{Field, FullOptions};

use super::InjectedError;
use super::buckets::Metering;
use super::error::ApiError;

/// One request the double received, in arrival order (failed, throttled, stormed and
/// black-holed ones included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The `Action` parameter (empty when the request could not be parsed).
    pub action: String,
    /// Every parameter, `Action` and `Version` included.
    pub params: BTreeMap<String, String>,
    /// When the double received it.
    pub at: Instant,
    /// The access key ID the request was signed with: `<AKID>` of `Credential=<AKID>/...` in
    /// its SigV4 `Authorization` header; empty when there is none. Tells apart clients (e.g.
    /// operator replicas) started with different keys (see [`super::Ec2Double::aws_env_with_key`]).
    pub access_key: String,
}

impl Recorded {
    /// One parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Whether the request had `DryRun=true`.
    pub fn dry_run(&self) -> bool {
        self.param("DryRun") == Some("true")
    }
}

/// An instance's lifecycle state, as far as the double models it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// `running` (code 16).
    Running,
    /// `terminated` (code 48): still listed by DescribeInstances, as EC2 does for about an hour.
    Terminated,
}

impl InstanceState {
    pub(super) fn name(self) -> &'static str {
        match self {
            InstanceState::Running => "running",
            InstanceState::Terminated => "terminated",
        }
    }

    pub(super) fn code(self) -> u16 {
        match self {
            InstanceState::Running => 16,
            InstanceState::Terminated => 48,
        }
    }
}

/// One simulated instance.
#[derive(Clone, Debug)]
pub(super) struct Instance {
    pub(super) options: FullOptions,
    /// DescribeInstances answers that still report `pending` for the last modify.
    pub(super) pending_left: u32,
    /// Tags in the order they were first set (EC2 keeps one value per key).
    pub(super) tags: Vec<(String, String)>,
    pub(super) state: InstanceState,
    /// Options this instance cannot take (see [`super::Ec2Double::unsupported`]).
    pub(super) unsupported: BTreeSet<Field>,
    pub(super) reservation_id: String,
    /// The order it was added in (1, 2, …): the made-up detail of its answer derives from it.
    pub(super) serial: u64,
    /// `LaunchTime` (when it was added, unless a test set another).
    pub(super) launched: std::time::SystemTime,
}

/// Every call of `actions` (every action when empty) is answered with `error` until `until`.
#[derive(Clone, Debug)]
pub(super) struct Storm {
    pub(super) actions: BTreeSet<String>,
    pub(super) error: InjectedError,
    pub(super) until: Instant,
}

/// The error the double answers a refused modify with while a declarative policy manages the
/// account's IMDS settings. AWS documents no code for it; see `Ec2Double::declarative_refusal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) code: String,
    /// `None`: the declarative policy's `managedExceptionMessage`, or the double's wording.
    pub(super) message: Option<String>,
}

impl Default for Refusal {
    fn default() -> Self {
        Refusal {
            code: "UnsupportedOperation".to_string(),
            message: None,
        }
    }
}

/// Everything the server and the test share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Sorted by ID, so pagination is stable.
    pub(super) instances: BTreeMap<String, Instance>,
    /// How many DescribeInstances answers report `pending` after a modify.
    pub(super) pending_describes: u32,
    /// At most this many instances per DescribeInstances page, whatever `MaxResults` says.
    pub(super) max_page_size: Option<usize>,
    /// DescribeInstances answers carry the rest of each instance (see `instance_detail`).
    pub(super) detailed_answers: bool,
    /// Actions answered with `UnauthorizedOperation`.
    pub(super) denied: BTreeSet<String>,
    /// Errors to answer the next calls of an action with, in order.
    pub(super) injected: HashMap<String, VecDeque<InjectedError>>,
    /// Timed storms of errors, in the order they were started.
    pub(super) storms: Vec<Storm>,
    /// Until when requests are swallowed (see `black_hole`).
    pub(super) black_hole_until: Option<Instant>,
    pub(super) requests: Vec<Recorded>,
    /// Token buckets, latency and call counters (see `buckets`).
    pub(super) metering: Metering,
    pub(super) request_count: u64,
    pub(super) reservation_count: u64,
    /// The account's IMDS defaults in this region (see `defaults`).
    pub(super) account_defaults: imds_core::defaults::AccountDefaults,
    /// What a modify is refused with while a declarative policy manages the defaults.
    pub(super) refusal: Refusal,
}

impl Shared {
    /// `InvalidInstanceID.NotFound` naming every id of `ids` the double does not hold.
    pub(super) fn all_exist(&self, ids: &[String]) -> Result<(), ApiError> {
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !self.instances.contains_key(id.as_str()))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApiError::not_found(&missing))
        }
    }
}

pub(super) type SharedState = Arc<Mutex<Shared>>;

pub(super) fn lock(state: &SharedState) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave `Shared` half-updated in a way that matters
    // to a test double; keep serving.
    state.lock().unwrap_or_else(|e| e.into_inner())
}
