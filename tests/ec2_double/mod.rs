//! A small, in-process EC2 test double that speaks the EC2 Query protocol.
//!
//! moto (the EC2 emulator the other tests use) cannot show several behaviours that matter to the
//! operator (see `ec2-imds.md`, "moto — known differences from EC2"): the `pending` apply state
//! after a modify, `DryRun` on ModifyInstanceMetadataOptions, `UnauthorizedOperation`,
//! `UnsupportedOperation`, EC2's refusal to enable instance metadata tags while a tag key is not
//! valid for IMDS, `RequestLimitExceeded` throttling, and a log of every request. This double
//! models exactly those, for four actions: DescribeInstances, ModifyInstanceMetadataOptions,
//! CreateTags and DeleteTags (instances only).
//!
//! It is an HTTP server on `127.0.0.1:<ephemeral port>` that runs on its own thread with its own
//! Tokio runtime, so it keeps answering while a test blocks (e.g. waiting for a child process),
//! whatever runtime flavour the test uses. Point an SDK client at it with
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
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::IntoFuture;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use imds_operator::api::{HttpTokens, Toggle};
use imds_operator::options::{Field, FullOptions};

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

/// EC2's limit on the values of one filter.
const MAX_FILTER_VALUES: usize = 200;
/// EC2's limit on the length of one filter value.
const MAX_FILTER_VALUE_LEN: usize = 255;
/// EC2's limit on user tags per resource.
const MAX_TAGS: usize = 50;

/// One request the double received, in arrival order (failed and throttled ones included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The `Action` parameter (empty when the request could not be parsed).
    pub action: String,
    /// Every parameter, `Action` and `Version` included.
    pub params: BTreeMap<String, String>,
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
    fn name(self) -> &'static str {
        match self {
            InstanceState::Running => "running",
            InstanceState::Terminated => "terminated",
        }
    }

    fn code(self) -> u16 {
        match self {
            InstanceState::Running => 16,
            InstanceState::Terminated => 48,
        }
    }
}

/// An error the double answers with instead of handling a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedError {
    /// HTTP status.
    pub status: u16,
    /// EC2 error code, e.g. `InternalError`.
    pub code: String,
    /// EC2 error message.
    pub message: String,
}

impl InjectedError {
    /// EC2's throttling answer: HTTP 503 `RequestLimitExceeded`.
    pub fn request_limit_exceeded() -> InjectedError {
        InjectedError {
            status: 503,
            code: "RequestLimitExceeded".into(),
            message: "Request limit exceeded.".into(),
        }
    }
}

/// One simulated instance.
#[derive(Clone, Debug)]
struct Instance {
    options: FullOptions,
    /// DescribeInstances answers that still report `pending` for the last modify.
    pending_left: u32,
    /// Tags in the order they were first set (EC2 keeps one value per key).
    tags: Vec<(String, String)>,
    state: InstanceState,
    /// Options this instance cannot take (see [`Ec2Double::unsupported`]).
    unsupported: BTreeSet<Field>,
    reservation_id: String,
}

/// Everything the server and the test share.
#[derive(Debug, Default)]
struct Shared {
    /// Sorted by ID, so pagination is stable.
    instances: BTreeMap<String, Instance>,
    /// How many DescribeInstances answers report `pending` after a modify.
    pending_describes: u32,
    /// At most this many instances per DescribeInstances page, whatever `MaxResults` says.
    max_page_size: Option<usize>,
    /// Actions answered with `UnauthorizedOperation`.
    denied: BTreeSet<String>,
    /// Errors to answer the next calls of an action with, in order.
    injected: HashMap<String, VecDeque<InjectedError>>,
    requests: Vec<Recorded>,
    request_count: u64,
    reservation_count: u64,
}

type SharedState = Arc<Mutex<Shared>>;

fn lock(state: &SharedState) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock cannot leave `Shared` half-updated in a way that matters
    // to a test double; keep serving.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

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
        let app = Router::new().fallback(handle).with_state(state.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ec2-double-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        eprintln!("ec2 double: no runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
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
        use aws_sdk_ec2::config::retry::{RetryConfig, RetryPartition};
        use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
        let retry = RetryConfig::standard()
            .with_initial_backoff(Duration::from_millis(10))
            .with_max_backoff(Duration::from_millis(100));
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                ACCESS_KEY_ID,
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
        crate::support::moto::endpoint_env(&self.endpoint())
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.state)
    }

    /// Adds a running instance with `options` (applied) and `tags`. Panics on an ID EC2 would
    /// call malformed, or one that exists already (mistakes in the test's setup).
    pub fn add_instance(&self, id: &str, options: FullOptions, tags: &[(&str, &str)]) {
        assert!(well_formed_instance_id(id), "malformed instance ID {id:?}");
        let mut shared = self.shared();
        shared.reservation_count += 1;
        let instance = Instance {
            options,
            pending_left: 0,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            state: InstanceState::Running,
            unsupported: BTreeSet::new(),
            reservation_id: format!("r-{:017x}", shared.reservation_count),
        };
        let previous = shared.instances.insert(id.to_string(), instance);
        assert!(previous.is_none(), "instance {id} added twice");
    }

    /// Forgets an instance entirely (as EC2 does about an hour after termination).
    pub fn remove_instance(&self, id: &str) {
        self.shared().instances.remove(id);
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

    /// After a successful modify the instance reports `pending` (with the new values) in the next
    /// `n` DescribeInstances answers that list it, then `applied`. The modify answer itself
    /// always says `pending`, as EC2 does for a running instance. Default 0. Applies to later
    /// modifies only.
    pub fn pending_describes(&self, n: u32) {
        self.shared().pending_describes = n;
    }

    /// DescribeInstances returns at most `n` instances per page (with a `nextToken` when more
    /// match), even when `MaxResults` is larger or absent: EC2 may return fewer items than
    /// asked, and clients must follow `nextToken`. `n` is at least 1.
    pub fn max_page_size(&self, n: usize) {
        self.shared().max_page_size = Some(n.max(1));
    }

    /// Answers every call of `action` (DryRun calls too) with `UnauthorizedOperation`.
    pub fn deny(&self, action: &str) {
        self.shared().denied.insert(action.to_string());
    }

    /// Undoes [`Ec2Double::deny`].
    pub fn allow(&self, action: &str) {
        self.shared().denied.remove(action);
    }

    /// The instance cannot take `field`: a modify that sets it to the value that turns
    /// something on is refused with `UnsupportedOperation`. That value is `enabled` for the
    /// three on/off options (e.g. IPv6 on a non-Nitro instance), `optional` for HttpTokens (an
    /// account that enforces IMDSv2), and any change for the hop limit.
    pub fn unsupported(&self, id: &str, field: Field) {
        self.with_instance(id, |i| {
            i.unsupported.insert(field);
        });
    }

    /// The next `n` calls of `action` are answered with HTTP 503 `RequestLimitExceeded`.
    pub fn throttle(&self, action: &str, n: u32) {
        self.fail(action, n, InjectedError::request_limit_exceeded());
    }

    /// The next `n` calls of `action` are answered with `error` (queued after any errors
    /// injected before).
    pub fn fail(&self, action: &str, n: u32, error: InjectedError) {
        let mut shared = self.shared();
        let queue = shared.injected.entry(action.to_string()).or_default();
        queue.extend(std::iter::repeat_n(error, n as usize));
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

/// An EC2 error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400 with `code`.
    fn bad(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 `InvalidParameterValue`.
    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::bad("InvalidParameterValue", message)
    }

    fn missing(name: &str) -> ApiError {
        ApiError::bad(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    fn dry_run() -> ApiError {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    /// `UnauthorizedOperation`, worded like IAM's answer (without the encoded message).
    fn unauthorized(action: &str, resource: Option<&str>) -> ApiError {
        let message = match resource {
            Some(resource) => format!(
                "You are not authorized to perform this operation. User: \
                 arn:aws:iam::{ACCOUNT_ID}:user/imds-operator-test is not authorized to perform: \
                 ec2:{action} on resource: {resource} because no identity-based policy allows \
                 the ec2:{action} action"
            ),
            None => "You are not authorized to perform this operation.".to_string(),
        };
        ApiError::new(StatusCode::FORBIDDEN, "UnauthorizedOperation", message)
    }

    fn not_found(ids: &[&str]) -> ApiError {
        let message = match ids {
            [id] => format!("The instance ID '{id}' does not exist"),
            _ => format!("The instance IDs '{}' do not exist", ids.join(", ")),
        };
        ApiError::bad("InvalidInstanceID.NotFound", message)
    }

    fn malformed(id: &str) -> ApiError {
        ApiError::bad("InvalidInstanceID.Malformed", format!("Invalid id: \"{id}\""))
    }
}

/// What one request is answered with.
type Answer = Result<String, ApiError>;

/// The single handler: every path and method, the action chosen by the `Action` parameter.
async fn handle(State(state): State<SharedState>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let parsed = parse_form(query.as_deref().unwrap_or("").as_bytes()).and_then(|mut params| {
        params.extend(parse_form(&body)?);
        Ok(params)
    });
    let mut shared = lock(&state);
    shared.request_count += 1;
    let request_id = format!("00000000-0000-4000-8000-{:012x}", shared.request_count);
    let answer = match parsed {
        Ok(params) => {
            let action = params.get("Action").cloned().unwrap_or_default();
            shared.requests.push(Recorded {
                action: action.clone(),
                params: params.clone(),
            });
            dispatch(&mut shared, &action, &params, &request_id)
        }
        Err(message) => {
            shared.requests.push(Recorded {
                action: String::new(),
                params: BTreeMap::new(),
            });
            Err(ApiError::invalid(message))
        }
    };
    drop(shared);
    let (status, body) = match answer {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (e.status, error_xml(&e, &request_id)),
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

/// Routes one parsed request. Injected errors come first (a throttled call is refused before
/// EC2 looks at it), then the action's own checks.
fn dispatch(shared: &mut Shared, action: &str, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    if action.is_empty() {
        return Err(ApiError::missing("Action"));
    }
    if let Some(injected) = shared.injected.get_mut(action).and_then(VecDeque::pop_front) {
        let status = StatusCode::from_u16(injected.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(ApiError::new(status, &injected.code, injected.message));
    }
    match action {
        DESCRIBE => describe_instances(shared, params, request_id),
        MODIFY => modify_options(shared, params, request_id),
        CREATE_TAGS => create_tags(shared, params, request_id),
        DELETE_TAGS => delete_tags(shared, params, request_id),
        other => Err(ApiError::bad(
            "InvalidAction",
            format!("The action {other} is not valid for this web service."),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// DescribeInstances.
// ---------------------------------------------------------------------------------------------

/// One `Filter.N`.
#[derive(Debug)]
struct Filter {
    name: String,
    values: Vec<String>,
}

impl Filter {
    /// Whether the instance matches (values are ORed). Only the filters the double knows are
    /// accepted by [`parse_filters`].
    fn matches(&self, id: &str, instance: &Instance) -> bool {
        let any = |value: &str| self.values.iter().any(|v| v == value);
        match self.name.as_str() {
            "instance-id" => any(id),
            "instance-state-name" => any(instance.state.name()),
            "tag-key" => instance.tags.iter().any(|(k, _)| any(k)),
            name => match name.strip_prefix("tag:") {
                Some(key) => instance.tags.iter().any(|(k, v)| k == key && any(v)),
                None => false,
            },
        }
    }
}

fn describe_instances(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let ids = indexed_list(params, "InstanceId")?;
    let filters = parse_filters(params)?;
    let max_results = optional_int(params, "MaxResults")?;
    let dry_run = flag(params, "DryRun")?;
    if shared.denied.contains(DESCRIBE) {
        return Err(ApiError::unauthorized(DESCRIBE, None));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    if let Some(max) = max_results {
        if !ids.is_empty() {
            return Err(ApiError::bad(
                "InvalidParameterCombination",
                "The parameter instancesSet cannot be used with the parameter maxResults",
            ));
        }
        if !(5..=1000).contains(&max) {
            return Err(ApiError::invalid(format!(
                "Value ( {max} ) for parameter maxResults is invalid. Expecting a value between 5 and 1000."
            )));
        }
    }
    // One invalid ID in InstanceId.N fails the whole call.
    if let Some(bad) = ids.iter().find(|id| !well_formed_instance_id(id)) {
        return Err(ApiError::malformed(bad));
    }
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !shared.instances.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::not_found(&missing));
    }
    let start = match params.get("NextToken") {
        Some(token) => parse_next_token(token)?,
        None => 0,
    };

    let matching: Vec<String> = shared
        .instances
        .iter()
        .filter(|(id, _)| ids.is_empty() || ids.contains(id))
        .filter(|(id, instance)| filters.iter().all(|f| f.matches(id, instance)))
        .map(|(id, _)| id.clone())
        .collect();
    let page_size = match (max_results, shared.max_page_size) {
        (Some(max), Some(cap)) => (max as usize).min(cap),
        (Some(max), None) => max as usize,
        (None, Some(cap)) => cap,
        (None, None) => usize::MAX,
    };
    let end = start.saturating_add(page_size).min(matching.len());
    let page = matching.get(start..end).unwrap_or_default();

    let mut xml = response_open("DescribeInstancesResponse", request_id);
    xml.push_str("<reservationSet>");
    for id in page {
        let Some(instance) = shared.instances.get_mut(id) else {
            continue;
        };
        let state = if instance.pending_left > 0 {
            instance.pending_left -= 1;
            "pending"
        } else {
            "applied"
        };
        write_reservation(&mut xml, id, instance, state);
    }
    xml.push_str("</reservationSet>");
    if end < matching.len() {
        let _ = write!(xml, "<nextToken>{}</nextToken>", next_token(end));
    }
    xml.push_str("</DescribeInstancesResponse>");
    Ok(xml)
}

/// `Filter.N.Name` and `Filter.N.Value.M`.
fn parse_filters(params: &BTreeMap<String, String>) -> Result<Vec<Filter>, ApiError> {
    let mut filters = Vec::new();
    for n in 1.. {
        let prefix = format!("Filter.{n}");
        let name = params.get(&format!("{prefix}.Name"));
        let values = indexed_list(params, &format!("{prefix}.Value"))?;
        let Some(name) = name else {
            if values.is_empty() {
                break;
            }
            return Err(ApiError::missing(&format!("{prefix}.Name")));
        };
        let known =
            matches!(name.as_str(), "instance-id" | "instance-state-name" | "tag-key") || name.starts_with("tag:");
        if !known {
            // EC2 knows many more filters; the double refuses the ones it does not model
            // rather than ignoring them.
            return Err(ApiError::invalid(format!("The filter '{name}' is invalid")));
        }
        if values.len() > MAX_FILTER_VALUES {
            return Err(ApiError::bad(
                "FilterLimitExceeded",
                format!("The maximum number of filter values specified on a single call is {MAX_FILTER_VALUES}"),
            ));
        }
        if let Some(long) = values.iter().find(|v| v.len() > MAX_FILTER_VALUE_LEN) {
            return Err(ApiError::invalid(format!(
                "The filter value '{long}' is longer than {MAX_FILTER_VALUE_LEN} characters"
            )));
        }
        filters.push(Filter {
            name: name.clone(),
            values,
        });
    }
    Ok(filters)
}

/// Pagination tokens are opaque to clients; the double's carry the offset of the next page.
fn next_token(offset: usize) -> String {
    format!("ec2-double-page-{offset}")
}

fn parse_next_token(token: &str) -> Result<usize, ApiError> {
    token
        .strip_prefix("ec2-double-page-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ApiError::invalid(format!("Invalid value '{token}' for NextToken")))
}

/// One instance in its own reservation.
fn write_reservation(xml: &mut String, id: &str, instance: &Instance, apply_state: &str) {
    let o = &instance.options;
    let _ = write!(
        xml,
        "<item><reservationId>{reservation}</reservationId><ownerId>{ACCOUNT_ID}</ownerId>\
         <groupSet/><instancesSet><item>\
         <instanceId>{id}</instanceId>\
         <imageId>ami-12c6146b</imageId>\
         <instanceState><code>{code}</code><name>{state}</name></instanceState>\
         <instanceType>m5.large</instanceType>",
        reservation = escape(&instance.reservation_id),
        id = escape(id),
        code = instance.state.code(),
        state = instance.state.name(),
    );
    xml.push_str("<tagSet>");
    for (key, value) in &instance.tags {
        let _ = write!(
            xml,
            "<item><key>{}</key><value>{}</value></item>",
            escape(key),
            escape(value)
        );
    }
    xml.push_str("</tagSet>");
    let _ = write!(
        xml,
        "<metadataOptions><state>{apply_state}</state><httpTokens>{}</httpTokens>\
         <httpPutResponseHopLimit>{}</httpPutResponseHopLimit><httpEndpoint>{}</httpEndpoint>\
         <httpProtocolIpv6>{}</httpProtocolIpv6><instanceMetadataTags>{}</instanceMetadataTags>\
         </metadataOptions>",
        o.http_tokens.as_str(),
        o.hop_limit,
        o.http_endpoint.as_str(),
        o.http_protocol_ipv6.as_str(),
        o.instance_metadata_tags.as_str(),
    );
    xml.push_str("</item></instancesSet></item>");
}

// ---------------------------------------------------------------------------------------------
// ModifyInstanceMetadataOptions.
// ---------------------------------------------------------------------------------------------

/// The check order is: parameters, authorization, existence, DryRun, what the instance can
/// take. (EC2 authorizes before it reveals whether a resource exists; unverified for this API.)
fn modify_options(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let id = params
        .get("InstanceId")
        .ok_or_else(|| ApiError::missing("InstanceId"))?;
    let tokens = optional(params, "HttpTokens", parse_tokens)?;
    let hop_limit = optional_int(params, "HttpPutResponseHopLimit")?;
    if let Some(hop) = hop_limit
        && !(1..=64).contains(&hop)
    {
        return Err(ApiError::invalid(format!(
            "The HttpPutResponseHopLimit value {hop} is out of range. It must be between 1 and 64."
        )));
    }
    let endpoint = optional(params, "HttpEndpoint", |v| parse_toggle("HttpEndpoint", v))?;
    let ipv6 = optional(params, "HttpProtocolIpv6", |v| parse_toggle("HttpProtocolIpv6", v))?;
    let tags = optional(params, "InstanceMetadataTags", |v| {
        parse_toggle("InstanceMetadataTags", v)
    })?;
    let dry_run = flag(params, "DryRun")?;
    if !well_formed_instance_id(id) {
        return Err(ApiError::malformed(id));
    }
    if shared.denied.contains(MODIFY) {
        return Err(ApiError::unauthorized(MODIFY, Some(&instance_arn(id))));
    }
    let pending_describes = shared.pending_describes;
    let Some(instance) = shared.instances.get_mut(id.as_str()) else {
        return Err(ApiError::not_found(&[id.as_str()]));
    };
    if dry_run {
        return Err(ApiError::dry_run());
    }
    if instance.state == InstanceState::Terminated {
        return Err(ApiError::bad(
            "IncorrectInstanceState",
            format!("The instance '{id}' is not in a state from which it can be modified."),
        ));
    }
    // Omitted parameters keep the current value. EC2 documents that only for the endpoint
    // and the hop limit (see ec2-imds.md); the operator always sends all five, which the
    // tests check in the request log rather than here.
    let current = instance.options;
    let new = FullOptions {
        http_tokens: tokens.unwrap_or(current.http_tokens),
        hop_limit: hop_limit.unwrap_or(current.hop_limit),
        http_endpoint: endpoint.unwrap_or(current.http_endpoint),
        http_protocol_ipv6: ipv6.unwrap_or(current.http_protocol_ipv6),
        instance_metadata_tags: tags.unwrap_or(current.instance_metadata_tags),
    };
    for field in &instance.unsupported {
        if let Some(message) = unsupported_change(id, *field, &current, &new) {
            return Err(ApiError::bad("UnsupportedOperation", message));
        }
    }
    if new.instance_metadata_tags == Toggle::Enabled
        && let Some((key, _)) = instance.tags.iter().find(|(k, _)| !imds_tag_key(k))
    {
        return Err(invalid_imds_tag_key(key));
    }
    instance.options = new;
    instance.pending_left = pending_describes;

    let mut xml = response_open("ModifyInstanceMetadataOptionsResponse", request_id);
    let _ = write!(
        xml,
        "<instanceId>{}</instanceId><instanceMetadataOptions><state>pending</state>\
         <httpTokens>{}</httpTokens><httpPutResponseHopLimit>{}</httpPutResponseHopLimit>\
         <httpEndpoint>{}</httpEndpoint><httpProtocolIpv6>{}</httpProtocolIpv6>\
         <instanceMetadataTags>{}</instanceMetadataTags></instanceMetadataOptions>\
         </ModifyInstanceMetadataOptionsResponse>",
        escape(id),
        new.http_tokens.as_str(),
        new.hop_limit,
        new.http_endpoint.as_str(),
        new.http_protocol_ipv6.as_str(),
        new.instance_metadata_tags.as_str(),
    );
    Ok(xml)
}

/// The `UnsupportedOperation` message if `new` sets an option this instance cannot take
/// (see [`Ec2Double::unsupported`]). The wording is the double's own (unverified).
fn unsupported_change(id: &str, field: Field, current: &FullOptions, new: &FullOptions) -> Option<String> {
    let refused = match field {
        Field::HttpTokens => new.http_tokens == HttpTokens::Optional,
        Field::HopLimit => new.hop_limit != current.hop_limit,
        Field::HttpEndpoint => new.http_endpoint == Toggle::Enabled,
        Field::HttpProtocolIpv6 => new.http_protocol_ipv6 == Toggle::Enabled,
        Field::InstanceMetadataTags => new.instance_metadata_tags == Toggle::Enabled,
    };
    refused.then(|| match field {
        Field::HttpTokens => {
            "HttpTokens cannot be set to optional: IMDSv2 is enforced for this account (HttpTokensEnforced).".to_string()
        }
        Field::HttpProtocolIpv6 => format!(
            "The IPv6 endpoint of the instance metadata service is not supported for instance '{id}': it is not built on the Nitro System."
        ),
        other => format!("The instance '{id}' does not support this value of {other}."),
    })
}

// ---------------------------------------------------------------------------------------------
// CreateTags and DeleteTags.
// ---------------------------------------------------------------------------------------------

/// `ResourceId.N`: required, instances only, all well-formed and existing.
fn tag_resources(shared: &Shared, params: &BTreeMap<String, String>) -> Result<Vec<String>, ApiError> {
    let ids = indexed_list(params, "ResourceId")?;
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceId"));
    }
    if let Some(bad) = ids.iter().find(|id| !well_formed_instance_id(id)) {
        return Err(if bad.starts_with("i-") {
            ApiError::malformed(bad)
        } else {
            // The double holds instances only.
            ApiError::bad("InvalidID", format!("The ID '{bad}' is not valid"))
        });
    }
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !shared.instances.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::not_found(&missing));
    }
    Ok(ids)
}

/// `Tag.N.Key` / `Tag.N.Value`.
fn tag_list(params: &BTreeMap<String, String>) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut tags = Vec::new();
    for n in 1.. {
        let key = params.get(&format!("Tag.{n}.Key"));
        let value = params.get(&format!("Tag.{n}.Value"));
        match (key, value) {
            (Some(key), value) => tags.push((key.clone(), value.cloned())),
            (None, Some(_)) => return Err(ApiError::missing(&format!("Tag.{n}.Key"))),
            (None, None) => break,
        }
    }
    Ok(tags)
}

fn create_tags(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let tags = tag_list(params)?;
    let dry_run = flag(params, "DryRun")?;
    if tags.is_empty() {
        return Err(ApiError::missing("Tag"));
    }
    for (key, value) in &tags {
        if key.is_empty() || key.chars().count() > 128 || key.to_ascii_lowercase().starts_with("aws:") {
            return Err(ApiError::invalid(format!("Tag key '{key}' is not valid")));
        }
        if value.as_deref().is_some_and(|v| v.chars().count() > 256) {
            return Err(ApiError::invalid(format!("Tag value for key '{key}' is too long")));
        }
    }
    let ids = tag_resources(shared, params)?;
    if shared.denied.contains(CREATE_TAGS) {
        let arn = instance_arn(&ids[0]);
        return Err(ApiError::unauthorized(CREATE_TAGS, Some(&arn)));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    // Check every instance before changing any, so that a refused call changes nothing.
    for id in &ids {
        let Some(instance) = shared.instances.get(id) else {
            continue;
        };
        let mut keys: BTreeSet<&str> = instance.tags.iter().map(|(k, _)| k.as_str()).collect();
        keys.extend(tags.iter().map(|(k, _)| k.as_str()));
        if keys.len() > MAX_TAGS {
            return Err(ApiError::bad(
                "TagLimitExceeded",
                format!("The maximum number of Tags for a resource has been reached ({MAX_TAGS})."),
            ));
        }
        // With tags in metadata on, EC2 refuses keys IMDS cannot serve (unverified for
        // CreateTags; documented for launches and for enabling the option).
        if instance.options.instance_metadata_tags == Toggle::Enabled
            && let Some((key, _)) = tags.iter().find(|(k, _)| !imds_tag_key(k))
        {
            return Err(invalid_imds_tag_key(key));
        }
    }
    for id in &ids {
        let Some(instance) = shared.instances.get_mut(id) else {
            continue;
        };
        for (key, value) in &tags {
            let value = value.clone().unwrap_or_default();
            match instance.tags.iter_mut().find(|(k, _)| k == key) {
                Some(existing) => existing.1 = value,
                None => instance.tags.push((key.clone(), value)),
            }
        }
    }
    Ok(return_true("CreateTagsResponse", request_id))
}

/// A tag without a value deletes the key whatever its value; with a value, only if it matches.
/// No `Tag.N` at all deletes every tag.
fn delete_tags(shared: &mut Shared, params: &BTreeMap<String, String>, request_id: &str) -> Answer {
    let tags = tag_list(params)?;
    let dry_run = flag(params, "DryRun")?;
    let ids = tag_resources(shared, params)?;
    if shared.denied.contains(DELETE_TAGS) {
        let arn = instance_arn(&ids[0]);
        return Err(ApiError::unauthorized(DELETE_TAGS, Some(&arn)));
    }
    if dry_run {
        return Err(ApiError::dry_run());
    }
    for id in &ids {
        let Some(instance) = shared.instances.get_mut(id) else {
            continue;
        };
        if tags.is_empty() {
            instance.tags.clear();
            continue;
        }
        instance.tags.retain(|(k, v)| {
            !tags
                .iter()
                .any(|(key, value)| key == k && value.as_ref().is_none_or(|value| value == v))
        });
    }
    Ok(return_true("DeleteTagsResponse", request_id))
}

// ---------------------------------------------------------------------------------------------
// Rules.
// ---------------------------------------------------------------------------------------------

/// `i-` and 8 or 17 lowercase hex digits.
fn well_formed_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Whether IMDS can serve a tag key: `[0-9a-zA-Z\-_+=,.@:]{1,255}` and not a reserved name.
/// Keys with `/` (e.g. `kubernetes.io/cluster/<name>`) or a space fail.
fn imds_tag_key(key: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_+=,.@:".contains(c);
    (1..=255).contains(&key.len()) && key.chars().all(allowed) && !matches!(key, "." | ".." | "_index")
}

/// EC2's answer when instance metadata tags meet a key IMDS cannot serve (the message as EC2
/// words it).
fn invalid_imds_tag_key(key: &str) -> ApiError {
    ApiError::invalid(format!(
        "'{key}' is not a valid tag key. Tag keys must match pattern ([0-9a-zA-Z\\-_+=,.@:]{{1,255}}), \
         and must not be a reserved name ('.', '..', '_index')"
    ))
}

fn instance_arn(id: &str) -> String {
    format!("arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/{id}")
}

// ---------------------------------------------------------------------------------------------
// Parameters.
// ---------------------------------------------------------------------------------------------

/// `{prefix}.1`, `{prefix}.2`, ... up to the first gap.
fn indexed_list(params: &BTreeMap<String, String>, prefix: &str) -> Result<Vec<String>, ApiError> {
    let mut values = Vec::new();
    for n in 1.. {
        match params.get(&format!("{prefix}.{n}")) {
            Some(value) => values.push(value.clone()),
            None => break,
        }
    }
    // A list that does not start at 1 or has a gap is a malformed request, not an empty list.
    let indexed = params
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.strip_prefix('.'))
        .filter(|rest| !rest.contains('.'))
        .count();
    if indexed != values.len() {
        return Err(ApiError::invalid(format!(
            "The list {prefix}.N is not numbered 1, 2, 3, ..."
        )));
    }
    Ok(values)
}

fn optional<T>(
    params: &BTreeMap<String, String>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    params.get(name).map(|v| parse(v)).transpose()
}

fn optional_int(params: &BTreeMap<String, String>, name: &str) -> Result<Option<i32>, ApiError> {
    optional(params, name, |v| {
        v.parse::<i32>()
            .map_err(|_| ApiError::invalid(format!("Invalid value '{v}' for {name}: not an integer")))
    })
}

/// A boolean parameter, false when absent.
fn flag(params: &BTreeMap<String, String>, name: &str) -> Result<bool, ApiError> {
    Ok(optional(params, name, |v| match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::invalid(format!(
            "Invalid value '{v}' for {name}: expecting true or false"
        ))),
    })?
    .unwrap_or(false))
}

fn parse_tokens(value: &str) -> Result<HttpTokens, ApiError> {
    match value {
        "required" => Ok(HttpTokens::Required),
        "optional" => Ok(HttpTokens::Optional),
        _ => Err(ApiError::invalid(format!(
            "Value ({value}) for parameter HttpTokens is invalid. Valid values are: optional, required."
        ))),
    }
}

fn parse_toggle(name: &str, value: &str) -> Result<Toggle, ApiError> {
    match value {
        "enabled" => Ok(Toggle::Enabled),
        "disabled" => Ok(Toggle::Disabled),
        _ => Err(ApiError::invalid(format!(
            "Value ({value}) for parameter {name} is invalid. Valid values are: enabled, disabled."
        ))),
    }
}

/// Parses `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte, UTF-8 overall).
/// A later duplicate key wins.
fn parse_form(input: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for pair in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        params.insert(percent_decode(key)?, percent_decode(value)?);
    }
    Ok(params)
}

fn percent_decode(input: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
                match (hex(bytes.next()), hex(bytes.next())) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err("The request has an invalid percent-encoding".to_string()),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| "The request is not valid UTF-8".to_string())
}

// ---------------------------------------------------------------------------------------------
// XML.
// ---------------------------------------------------------------------------------------------

fn response_open(element: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{element} xmlns=\"{NAMESPACE}\"><requestId>{request_id}</requestId>"
    )
}

fn return_true(element: &str, request_id: &str) -> String {
    let mut xml = response_open(element, request_id);
    let _ = write!(xml, "<return>true</return></{element}>");
    xml
}

fn error_xml(error: &ApiError, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
         <Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        escape(&error.code),
        escape(&error.message)
    )
}

/// Escapes text for an XML element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
