//! A small, in-process EC2 test double that speaks the EC2 Query protocol.
//!
//! moto (the EC2 emulator the other tests use) cannot show several behaviours that matter to the
//! operator (see `docs/ec2-semantics.md`, "moto — known differences from EC2"): the `pending`
//! apply state after a modify, `DryRun` on ModifyInstanceMetadataOptions, `UnauthorizedOperation`,
//! `UnsupportedOperation`, EC2's refusal to enable instance metadata tags while a tag key is not
//! valid for IMDS, `RequestLimitExceeded` throttling (injected, or from EC2's token buckets per
//! account), per-call latency, timed storms of 5xx errors, a black hole that answers nothing, and
//! a log of every request with the access key that signed it, with call counters per action and
//! key. This double models exactly those, for four actions: DescribeInstances,
//! ModifyInstanceMetadataOptions, CreateTags and DeleteTags (instances only); and the account's
//! IMDS defaults (GetInstanceMetadataDefaults, ModifyInstanceMetadataDefaults) with `managedBy`
//! set by the test and the refusal of modifies while a declarative policy manages them.
//! `docs/ec2-semantics.md` states each behaviour, its source, and the tests that rely on it.
//!
//! It is an HTTP server on `127.0.0.1:<ephemeral port>` that runs on its own thread with its own
//! Tokio runtime (two worker threads; every connection is a task of its own, so many requests
//! are answered at once), so it keeps answering while a test blocks (e.g. waiting for a child
//! process), whatever runtime flavour the test uses. Point an SDK client at it with
//! [`Ec2Double::sdk_client`], or a child process (the operator binary) with
//! [`Ec2Double::aws_env`], which sets `AWS_ENDPOINT_URL`.
//!
//! Requests are form-encoded (`Action=...&Version=2016-11-15&...`, in the POST body or the query
//! string); answers are EC2's XML. Errors are
//! `<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>`, which is
//! what `aws-sdk-ec2`'s `ec2_query_errors::parse_error_metadata` reads, with EC2's HTTP status:
//! 400 for client errors, 403 `UnauthorizedOperation`, 412 `DryRunOperation`, 503
//! `RequestLimitExceeded`. Input the double cannot parse is answered with a 400
//! `InvalidParameterValue`; the server never panics on a request.
//!
//! Where EC2's behaviour is not documented, the double picks the plausible one and says so at
//! the spot ("unverified").
//!
//! Layout: this module has the server, the routing, and the setup and inspection API; one
//! submodule per action (`describe`: DescribeInstances, `modify`: ModifyInstanceMetadataOptions,
//! `tags`: CreateTags and DeleteTags, `defaults`: the account's IMDS defaults), each with the knobs that shape its answers; injected
//! failures (throttling, denials, any error, storms) in `faults`, the black hole and the
//! connections it cuts in `black_hole`; EC2's token buckets, latency and call counters in
//! `buckets`; the state the server and the test share
//! in `state`; EC2's rules, the parameter parsing, the error answers and the XML in `rules`,
//! `params`, `error` and `xml`.

mod black_hole;
mod buckets;
mod defaults;
mod describe;
mod error;
mod faults;
mod instance_detail;
mod modify;
mod params;
mod rules;
mod state;
mod tags;
mod xml;

use std::collections::{BTreeMap, BTreeSet};
use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::MutexGuard;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imds_core::options::FullOptions;

use self::black_hole::Connection;
use self::error::{Answer, ApiError};
use self::state::{Instance, Shared, SharedState, lock};

pub use self::buckets::{
    ALL_ACTIONS, BUCKET_MUTATING, BUCKET_NON_MUTATING, BUCKET_TAGGING, BUCKET_UNFILTERED, CallCounts, Latency,
};
pub use self::faults::InjectedError;
pub use self::state::{InstanceState, Recorded};

/// The XML namespace of every EC2 response.
pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
/// The region the SDK client and [`Ec2Double::aws_env`] use.
pub const REGION: &str = "us-east-1";
/// The account that owns every instance.
pub const ACCOUNT_ID: &str = "123456789012";
/// Static test credentials (the double does not check signatures).
pub const ACCESS_KEY_ID: &str = "testing";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "testing";

/// ModifyInstanceMetadataOptions.
pub const MODIFY: &str = "ModifyInstanceMetadataOptions";
/// DescribeInstances.
pub const DESCRIBE: &str = "DescribeInstances";
/// GetInstanceMetadataDefaults.
pub const GET_DEFAULTS: &str = "GetInstanceMetadataDefaults";
/// ModifyInstanceMetadataDefaults.
pub const MODIFY_DEFAULTS: &str = "ModifyInstanceMetadataDefaults";
/// CreateTags.
pub const CREATE_TAGS: &str = "CreateTags";
/// DeleteTags.
pub const DELETE_TAGS: &str = "DeleteTags";

/// The five option parameters of ModifyInstanceMetadataOptions, as the SDK spells them.
pub const OPTION_PARAMS: [&str; 5] = [
    "HttpTokens",
    "HttpPutResponseHopLimit",
    "HttpEndpoint",
    "HttpProtocolIpv6",
    "InstanceMetadataTags",
];

/// A running double. Dropping it stops the server.
#[derive(Debug)]
pub struct Ec2Double {
    state: SharedState,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ec2Double {
    /// Starts a server on `127.0.0.1:0` on its own thread. Panics if it cannot bind (test setup).
    pub async fn start() -> Ec2Double {
        Ec2Double::start_blocking()
    }

    /// [`Ec2Double::start`] for code outside an async context (it never blocks for long: the
    /// socket is bound before it returns, so connections queue until the server thread accepts).
    pub fn start_blocking() -> Ec2Double {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("ec2 double: binding 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("ec2 double: non-blocking listener");
        let addr = listener.local_addr().expect("ec2 double: local address");
        let state = SharedState::default();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .fallback(handle)
            .with_state(state.clone())
            .into_make_service_with_connect_info::<Connection>();
        let thread = std::thread::Builder::new()
            .name(format!("ec2-double-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(format!("ec2-double-{}-worker", addr.port()))
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        eprintln!("ec2 double: no runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => black_hole::Listener(listener),
                        Err(e) => {
                            eprintln!("ec2 double: listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        served = axum::serve(listener, app).into_future() => {
                            if let Err(e) = served {
                                eprintln!("ec2 double: server stopped: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels the open connections' tasks.
            })
            .expect("ec2 double: spawning the server thread");
        Ec2Double {
            state,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An EC2 client for the double: us-east-1, static test credentials, nothing from the
    /// environment. Retries are the SDK's default (standard mode, 3 attempts) with a 10 ms initial
    /// and 100 ms maximum backoff so that tests stay fast, and a retry partition of its own, so
    /// that throttling in one test does not drain the retry quota of another.
    pub async fn sdk_client(&self) -> aws_sdk_ec2::Client {
        self.sdk_client_with_key(ACCESS_KEY_ID).await
    }

    /// [`Ec2Double::sdk_client`], signing with access key ID `access_key` (the double records
    /// it in [`Recorded::access_key`]).
    pub async fn sdk_client_with_key(&self, access_key: &str) -> aws_sdk_ec2::Client {
        use aws_sdk_ec2::config::retry::{RetryConfig, RetryPartition};
        use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
        let retry = RetryConfig::standard()
            .with_initial_backoff(Duration::from_millis(10))
            .with_max_backoff(Duration::from_millis(100));
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                access_key,
                SECRET_ACCESS_KEY,
                None,
                None,
                "ec2-double",
            ))
            .endpoint_url(self.endpoint())
            .retry_config(retry)
            .retry_partition(RetryPartition::new(format!("ec2-double-{}", self.addr.port())))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// Environment for a child process (e.g. the operator binary) whose AWS SDK default chain
    /// should talk to the double.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        crate::moto::endpoint_env(&self.endpoint())
    }

    /// [`Ec2Double::aws_env`] with `AWS_ACCESS_KEY_ID` set to `access_key`: start each operator
    /// replica with its own key, and [`Ec2Double::requests_by_key`] tells which sent what.
    pub fn aws_env_with_key(&self, access_key: &str) -> Vec<(String, String)> {
        let mut env = self.aws_env();
        for (name, value) in &mut env {
            if name == "AWS_ACCESS_KEY_ID" {
                *value = access_key.to_string();
            }
        }
        env
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.state)
    }

    /// Adds a running instance with `options` (applied) and `tags`. Panics on an ID EC2 would
    /// call malformed, or one that exists already (mistakes in the test's setup).
    pub fn add_instance(&self, id: &str, options: FullOptions, tags: &[(&str, &str)]) {
        assert!(rules::well_formed_instance_id(id), "malformed instance ID {id:?}");
        let mut shared = self.shared();
        shared.reservation_count += 1;
        let instance = Instance {
            options,
            pending_left: 0,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            state: InstanceState::Running,
            unsupported: BTreeSet::new(),
            reservation_id: format!("r-{:017x}", shared.reservation_count),
            serial: shared.reservation_count,
            launched: std::time::SystemTime::now(),
        };
        let previous = shared.instances.insert(id.to_string(), instance);
        assert!(previous.is_none(), "instance {id} added twice");
    }

    /// Sets an instance's `LaunchTime` (e.g. long ago, for an instance that is not new).
    pub fn set_launch_time(&self, id: &str, launched: std::time::SystemTime) {
        self.with_instance(id, |i| i.launched = launched);
    }

    /// Marks an instance terminated: DescribeInstances still lists it (state `terminated`), and
    /// a modify is refused with `IncorrectInstanceState` (unverified: EC2's exact answer for a
    /// terminated instance is not documented).
    pub fn terminate(&self, id: &str) {
        self.with_instance(id, |i| i.state = InstanceState::Terminated);
    }

    /// Changes an instance's options out of band (another tool, a person in the console). The
    /// change is applied at once.
    pub fn set_options(&self, id: &str, options: FullOptions) {
        self.with_instance(id, |i| {
            i.options = options;
            i.pending_left = 0;
        });
    }

    /// An instance's current options.
    pub fn options(&self, id: &str) -> Option<FullOptions> {
        self.shared().instances.get(id).map(|i| i.options)
    }

    /// An instance's tags.
    pub fn tags(&self, id: &str) -> Option<Vec<(String, String)>> {
        self.shared().instances.get(id).map(|i| i.tags.clone())
    }

    /// Whether the instance's last modify still reports `pending`.
    pub fn is_pending(&self, id: &str) -> Option<bool> {
        self.shared().instances.get(id).map(|i| i.pending_left > 0)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared().requests.clone()
    }

    /// The requests of one action, in arrival order.
    pub fn requests_for(&self, action: &str) -> Vec<Recorded> {
        self.shared()
            .requests
            .iter()
            .filter(|r| r.action == action)
            .cloned()
            .collect()
    }

    /// Every request so far by the access key that signed it (`""`: unsigned), each list in
    /// arrival order.
    pub fn requests_by_key(&self) -> BTreeMap<String, Vec<Recorded>> {
        let mut by_key: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
        for request in &self.shared().requests {
            by_key
                .entry(request.access_key.clone())
                .or_default()
                .push(request.clone());
        }
        by_key
    }

    /// The first request for which `matches` holds, in arrival order (the log is not copied).
    pub fn find_request(&self, matches: impl Fn(&Recorded) -> bool) -> Option<Recorded> {
        self.shared().requests.iter().find(|r| matches(r)).cloned()
    }

    /// How many instances (ID, current options) `matches`.
    pub fn count_instances(&self, matches: impl Fn(&str, &FullOptions) -> bool) -> usize {
        let shared = self.shared();
        shared
            .instances
            .iter()
            .filter(|(id, i)| matches(id, &i.options))
            .count()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared().requests.clear();
    }

    /// Runs `f` on an instance; panics if there is none (a mistake in the test's setup).
    fn with_instance(&self, id: &str, f: impl FnOnce(&mut Instance)) {
        let mut shared = self.shared();
        let instance = shared
            .instances
            .get_mut(id)
            .unwrap_or_else(|| panic!("no instance {id} in the ec2 double"));
        f(instance);
    }
}

impl Drop for Ec2Double {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------------

/// The single handler: every path and method, the action chosen by the `Action` parameter.
async fn handle(
    State(state): State<SharedState>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let parsed = params::parse_form(query.as_deref().unwrap_or("").as_bytes()).and_then(|mut params| {
        params.extend(params::parse_form(&body)?);
        Ok(params)
    });
    let Some((request_id, answer, delay)) = record_and_answer(&state, parsed, access_key(&headers)) else {
        return black_hole::swallow(&state, &connection).await;
    };
    if !delay.is_zero() {
        // The lock is not held here: other requests are answered meanwhile.
        tokio::time::sleep(delay).await;
    }
    let (status, body) = match answer {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (e.status, xml::error_xml(&e, &request_id)),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/xml;charset=UTF-8".to_string()),
            (header::HeaderName::from_static("x-amzn-requestid"), request_id),
        ],
        body,
    )
        .into_response()
}

/// Logs a request, counts it and answers it (request ID, answer, how long the answer waits), all
/// under the lock; `None` when the black hole swallows it.
fn record_and_answer(
    state: &SharedState,
    parsed: Result<BTreeMap<String, String>, String>,
    access_key: String,
) -> Option<(String, Answer, Duration)> {
    let mut shared = lock(state);
    shared.request_count += 1;
    let request_id = format!("00000000-0000-4000-8000-{:012x}", shared.request_count);
    let now = Instant::now();
    let params = parsed.as_ref().cloned().unwrap_or_default();
    let action = params.get("Action").cloned().unwrap_or_default();
    if black_hole::swallows(&shared, now) {
        shared.requests.push(Recorded {
            action,
            params,
            at: now,
            access_key,
        });
        return None;
    }
    let answer = match &parsed {
        Ok(params) => dispatch(&mut shared, &action, params, &request_id, now),
        Err(message) => Err(ApiError::invalid(message.clone())),
    };
    let error = answer.as_ref().err().map(|e| e.code.as_str());
    let delay = buckets::count_and_delay(&mut shared.metering, &access_key, &action, error);
    shared.requests.push(Recorded {
        action,
        params,
        at: now,
        access_key,
    });
    Some((request_id, answer, delay))
}

/// The access key ID of a SigV4 `Authorization` header
/// (`AWS4-HMAC-SHA256 Credential=<AKID>/<date>/<region>/<service>/aws4_request, ...`); empty
/// when there is none.
fn access_key(headers: &HeaderMap) -> String {
    let Some(authorization) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return String::new();
    };
    authorization
        .split([' ', ','])
        .find_map(|part| part.strip_prefix("Credential="))
        .and_then(|credential| credential.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Routes one parsed request that arrived at `now`. Injected errors come first (a throttled call
/// is refused before EC2 looks at it): a storm's, then the next queued one, then an empty token
/// bucket; then the action's own checks.
fn dispatch(
    shared: &mut Shared,
    action: &str,
    params: &BTreeMap<String, String>,
    request_id: &str,
    now: Instant,
) -> Answer {
    if action.is_empty() {
        return Err(ApiError::missing("Action"));
    }
    if let Some(stormed) = faults::storm_error(shared, action, now) {
        return Err(stormed);
    }
    if let Some(injected) = faults::take_injected(shared, action) {
        return Err(injected);
    }
    buckets::take_token(&mut shared.metering, action, params, now)?;
    match action {
        DESCRIBE => describe::describe_instances(shared, params, request_id),
        MODIFY => modify::modify_options(shared, params, request_id),
        CREATE_TAGS => tags::create_tags(shared, params, request_id),
        DELETE_TAGS => tags::delete_tags(shared, params, request_id),
        GET_DEFAULTS => defaults::get_defaults(shared, params, request_id),
        MODIFY_DEFAULTS => defaults::modify_defaults(shared, params, request_id),
        other => Err(ApiError::bad(
            "InvalidAction",
            format!("The action {other} is not valid for this web service."),
        )),
    }
}
