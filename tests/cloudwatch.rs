//! Tier-2 tests of the IMDSv1 usage reader (`imds_operator::aws::cloudwatch`) against real
//! CloudWatch wire protocol servers: moto where it models the behaviour (sums per instance, the
//! lookback window, batches of 500 queries), and a small in-file CloudWatch double where moto
//! cannot: moto never paginates GetMetricData (no `NextToken`), never denies a call or a single
//! query (`AccessDenied`, `Forbidden`), and never throttles (see `docs/ec2-semantics.md`, "moto —
//! known differences from EC2").
//!
//! Every test starts its own server. Run with `cargo test --test cloudwatch`; the moto tests need
//! `hack/setup-moto.sh` (run on demand by the harness, cached afterwards).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use aws_sdk_cloudwatch::error::DisplayErrorContext;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_smithy_types::DateTime;
use imds_core::usage::UsageSeries;
use imds_operator::aws::cloudwatch::{QUERY_BATCH, UsageReader};
use imds_operator::aws::{AwsError, AwsErrorKind};
use imds_operator::telemetry::metrics::Metrics;
use imds_test_support::{Moto, free_port};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A well-formed (17 hex digits) instance ID; sorted like `n`.
fn instance_id(n: u64) -> String {
    format!("i-{n:017x}")
}

/// A reader with a client-side limit high enough never to slow a test down.
fn reader(client: aws_sdk_cloudwatch::Client) -> (UsageReader, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (
        UsageReader::with_rate_limit(client, metrics.clone(), 1000, 1000.0),
        metrics,
    )
}

/// `imds_operator_aws_api_calls_total{operation="GetMetricData", outcome}` (0 if absent).
fn calls(metrics: &Metrics, outcome: &str) -> u64 {
    let series = format!("imds_operator_aws_api_calls_total{{operation=\"GetMetricData\",outcome=\"{outcome}\"}}");
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

type Answers = HashMap<String, Result<UsageSeries, AwsError>>;

/// The answer for one instance, its calls summed over the periods (panics if there is none).
fn answer(answers: &Answers, id: &str) -> Result<f64, AwsError> {
    let answer = answers.get(id).unwrap_or_else(|| panic!("no answer for {id}"));
    answer.as_ref().map(UsageSeries::total).map_err(Clone::clone)
}

/// The error for one instance (panics if it has a sum).
fn error(answers: &Answers, id: &str) -> AwsError {
    match answer(answers, id) {
        Err(e) => e,
        Ok(sum) => panic!("{id}: expected an error, got {sum}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Against moto.
// ---------------------------------------------------------------------------------------------

/// One `MetadataNoToken` datapoint of `instance_id`, `ago` before `now`.
fn datapoint(instance_id: &str, value: f64, now: SystemTime, ago: Duration) -> MetricDatum {
    MetricDatum::builder()
        .metric_name("MetadataNoToken")
        .dimensions(Dimension::builder().name("InstanceId").value(instance_id).build())
        .value(value)
        .unit(StandardUnit::Count)
        .timestamp(DateTime::from(now - ago))
        .build()
}

/// Publishes datapoints to `AWS/EC2` (what EC2 itself does for `MetadataNoToken`).
async fn put(client: &aws_sdk_cloudwatch::Client, data: Vec<MetricDatum>) -> Result<()> {
    for chunk in data.chunks(500) {
        client
            .put_metric_data()
            .namespace("AWS/EC2")
            .set_metric_data(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("PutMetricData on moto: {}", DisplayErrorContext(e)))?;
    }
    Ok(())
}

/// Instance A made 3 + 4 tokenless calls in the last hour, B none: A sums to 7, B is 0 (not an
/// error), in one GetMetricData call. A datapoint of another metric does not count.
#[tokio::test]
async fn moto_sums_tokenless_calls_per_instance() -> Result<()> {
    let moto = Moto::start()?;
    let ids = moto.run_instances(2, &[]).await?;
    let (a, b) = (&ids[0], &ids[1]);
    let client = moto.cloudwatch_client().await;
    let now = SystemTime::now();
    put(
        &client,
        vec![
            datapoint(a, 3.0, now, Duration::from_secs(50 * 60)),
            datapoint(a, 4.0, now, Duration::from_secs(10 * 60)),
        ],
    )
    .await?;
    // MetadataNoTokenRejected (refused calls) is another metric: not counted.
    let rejected = MetricDatum::builder()
        .metric_name("MetadataNoTokenRejected")
        .dimensions(Dimension::builder().name("InstanceId").value(b).build())
        .value(5.0)
        .timestamp(DateTime::from(now - Duration::from_secs(60)))
        .build();
    put(&client, vec![rejected]).await?;

    let (usage, metrics) = reader(client);
    let answers = usage.tokenless_calls(&ids, DAY, now).await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answer(&answers, a), Ok(7.0));
    assert_eq!(answer(&answers, b), Ok(0.0), "no datapoints is zero");
    assert_eq!(calls(&metrics, "ok"), 1);
    Ok(())
}

/// The window is `[now - lookback, now]` (widened by less than one 5-minute period): a datapoint
/// three hours old counts with a 24 h lookback and not with a 1 h one (moto honours StartTime).
#[tokio::test]
async fn moto_datapoints_older_than_the_lookback_are_not_counted() -> Result<()> {
    let moto = Moto::start()?;
    let a = instance_id(0xa);
    let client = moto.cloudwatch_client().await;
    let now = SystemTime::now();
    put(
        &client,
        vec![
            datapoint(&a, 5.0, now, 3 * HOUR),
            datapoint(&a, 2.0, now, Duration::from_secs(20 * 60)),
            datapoint(&a, 100.0, now, 2 * DAY),
        ],
    )
    .await?;

    let (usage, _) = reader(client);
    let ids = [a.clone()];
    assert_eq!(answer(&usage.tokenless_calls(&ids, HOUR, now).await, &a), Ok(2.0));
    assert_eq!(answer(&usage.tokenless_calls(&ids, DAY, now).await, &a), Ok(7.0));
    assert_eq!(answer(&usage.tokenless_calls(&ids, 3 * DAY, now).await, &a), Ok(107.0));
    // Seen from two hours later, with a 1 h lookback, nothing is left.
    let later = now + 2 * HOUR;
    assert_eq!(answer(&usage.tokenless_calls(&ids, HOUR, later).await, &a), Ok(0.0));
    Ok(())
}

/// 600 instance ids (they need not exist): every id gets an answer, in ⌈600/500⌉ = 2 calls, and
/// datapoints at both ends of both batches land on the right instance.
#[tokio::test]
async fn moto_600_instances_in_batches_of_500() -> Result<()> {
    let moto = Moto::start()?;
    let client = moto.cloudwatch_client().await;
    let ids: Vec<String> = (1..=600).map(instance_id).collect();
    let now = SystemTime::now();
    // Sorted order is numeric order: ids[499] ends batch 1, ids[500] starts batch 2.
    let with_data = [(0, 1.0), (499, 2.0), (500, 3.0), (599, 4.0)];
    let data = with_data
        .iter()
        .map(|&(i, value)| datapoint(&ids[i], value, now, Duration::from_secs(15 * 60)))
        .collect();
    put(&client, data).await?;

    let (usage, metrics) = reader(client);
    let mut requested = ids.clone();
    requested.reverse();
    requested.push(ids[0].clone()); // a duplicate is answered once
    let answers = usage.tokenless_calls(&requested, DAY, now).await;

    assert_eq!(answers.len(), 600);
    for (i, id) in ids.iter().enumerate() {
        let want = with_data.iter().find(|(j, _)| *j == i).map_or(0.0, |(_, v)| *v);
        assert_eq!(answer(&answers, id), Ok(want), "{i}: {id}");
    }
    assert_eq!(calls(&metrics, "ok"), ids.len().div_ceil(QUERY_BATCH) as u64);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Against the CloudWatch double.
// ---------------------------------------------------------------------------------------------

/// A minimal CloudWatch double for GetMetricData in the Smithy RPC v2 CBOR protocol (what
/// `aws-sdk-cloudwatch` speaks): each request gets the next scripted answer and is logged.
mod double {
    use std::collections::VecDeque;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};

    /// A CBOR value (the subset the answers need).
    pub enum Cbor {
        Text(String),
        F64(f64),
        Array(Vec<Cbor>),
        Map(Vec<(&'static str, Cbor)>),
    }

    /// A text value.
    pub fn text(s: &str) -> Cbor {
        Cbor::Text(s.to_string())
    }

    fn head(out: &mut Vec<u8>, major: u8, len: usize) {
        let major = major << 5;
        match len {
            0..24 => out.push(major | len as u8),
            24..256 => out.extend([major | 24, len as u8]),
            256..65536 => {
                out.push(major | 25);
                out.extend((len as u16).to_be_bytes());
            }
            _ => {
                out.push(major | 26);
                out.extend((len as u32).to_be_bytes());
            }
        }
    }

    impl Cbor {
        /// The encoding.
        pub fn encode(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.write(&mut out);
            out
        }

        fn write(&self, out: &mut Vec<u8>) {
            match self {
                Cbor::Text(s) => {
                    head(out, 3, s.len());
                    out.extend(s.as_bytes());
                }
                Cbor::F64(v) => {
                    out.push(0xfb);
                    out.extend(v.to_be_bytes());
                }
                Cbor::Array(items) => {
                    head(out, 4, items.len());
                    items.iter().for_each(|i| i.write(out));
                }
                Cbor::Map(entries) => {
                    head(out, 5, entries.len());
                    for (k, v) in entries {
                        head(out, 3, k.len());
                        out.extend(k.as_bytes());
                        v.write(out);
                    }
                }
            }
        }
    }

    /// One metric data result.
    pub fn result(id: &str, values: &[f64], status: &str) -> Cbor {
        Cbor::Map(vec![
            ("Id", text(id)),
            ("Values", Cbor::Array(values.iter().map(|v| Cbor::F64(*v)).collect())),
            ("StatusCode", text(status)),
        ])
    }

    /// A scripted answer: HTTP status and CBOR body.
    pub struct Answer(pub u16, pub Cbor);

    /// A successful GetMetricData page.
    pub fn page(results: Vec<Cbor>, next_token: Option<&str>) -> Answer {
        let mut entries = vec![("MetricDataResults", Cbor::Array(results))];
        if let Some(token) = next_token {
            entries.push(("NextToken", text(token)));
        }
        Answer(200, Cbor::Map(entries))
    }

    /// An error answer, as CloudWatch sends it in RPC v2 CBOR.
    pub fn aws_error(status: u16, code: &str, message: &str) -> Answer {
        Answer(
            status,
            Cbor::Map(vec![("__type", text(code)), ("message", text(message))]),
        )
    }

    #[derive(Default)]
    struct Inner {
        script: VecDeque<Answer>,
        /// (path, body) of every request.
        log: Vec<(String, Vec<u8>)>,
    }

    /// The double; it serves until the test's runtime ends.
    #[derive(Clone)]
    pub struct CloudWatchDouble {
        inner: Arc<Mutex<Inner>>,
        endpoint: String,
    }

    impl CloudWatchDouble {
        /// Serves `script`, one answer per request (a 500 `InternalFailure` once it runs out).
        pub async fn start(script: Vec<Answer>) -> CloudWatchDouble {
            let inner = Arc::new(Mutex::new(Inner {
                script: script.into(),
                log: Vec::new(),
            }));
            let app = Router::new().fallback(handle).with_state(inner.clone());
            let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await
                .expect("bind the double");
            let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
            tokio::spawn(async move { axum::serve(listener, app).await });
            CloudWatchDouble { inner, endpoint }
        }

        /// A CloudWatch client for the double, without SDK retries so that each scripted answer
        /// is seen by the reader.
        pub fn client(&self) -> aws_sdk_cloudwatch::Client {
            super::sdk_client(&self.endpoint)
        }

        /// (path, body) of every request so far.
        pub fn requests(&self) -> Vec<(String, Vec<u8>)> {
            self.inner.lock().unwrap_or_else(|e| e.into_inner()).log.clone()
        }
    }

    async fn handle(State(inner): State<Arc<Mutex<Inner>>>, uri: Uri, body: Bytes) -> Response {
        let answer = {
            let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.log.push((uri.path().to_string(), body.to_vec()));
            inner.script.pop_front()
        };
        let Answer(status, body) = answer.unwrap_or_else(|| aws_error(500, "InternalFailure", "script ran out"));
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [
                (header::CONTENT_TYPE, "application/cbor"),
                (header::HeaderName::from_static("smithy-protocol"), "rpc-v2-cbor"),
            ],
            body.encode(),
        )
            .into_response()
    }
}

/// A CloudWatch client for `endpoint`: static test credentials, no SDK retries.
fn sdk_client(endpoint: &str) -> aws_sdk_cloudwatch::Client {
    use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "imds-operator-tests",
        ))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_cloudwatch::Client::from_conf(config)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Values of one query spread over two pages add up; the second request carries the first
/// page's `NextToken`.
#[tokio::test]
async fn pages_are_followed_and_summed() {
    use double::{CloudWatchDouble, page, result};
    let cw = CloudWatchDouble::start(vec![
        page(
            vec![result("q0", &[1.0, 2.0], "PartialData"), result("q1", &[], "Complete")],
            Some("token-1"),
        ),
        page(vec![result("q0", &[4.0], "Complete")], None),
    ])
    .await;
    let (usage, metrics) = reader(cw.client());
    let ids = [instance_id(1), instance_id(2)];
    let answers = usage.tokenless_calls(&ids, DAY, SystemTime::now()).await;

    assert_eq!(answer(&answers, &ids[0]), Ok(7.0));
    assert_eq!(answer(&answers, &ids[1]), Ok(0.0));
    let requests = cw.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].0.ends_with("/operation/GetMetricData"), "{}", requests[0].0);
    assert!(!contains(&requests[0].1, b"token-1"));
    assert!(contains(&requests[1].1, b"NextToken") && contains(&requests[1].1, b"token-1"));
    for name in [
        &b"MetadataNoToken"[..],
        b"AWS/EC2",
        b"InstanceId",
        b"Sum",
        ids[1].as_bytes(),
    ] {
        assert!(
            contains(&requests[0].1, name),
            "{} not in the request",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(calls(&metrics, "ok"), 2);
}

/// A denied call fails every id of its batch and only its batch: of 501 ids, the first 500 are
/// `PermissionDenied`, the last one (second batch) is read.
#[tokio::test]
async fn access_denied_fails_every_id_of_the_batch() {
    use double::{CloudWatchDouble, aws_error, page, result};
    let cw = CloudWatchDouble::start(vec![
        aws_error(
            403,
            "AccessDenied",
            "not authorized to perform: cloudwatch:GetMetricData",
        ),
        page(vec![result("q0", &[], "Complete")], None),
    ])
    .await;
    let (usage, metrics) = reader(cw.client());
    let ids: Vec<String> = (1..=501).map(instance_id).collect();
    let answers = usage.tokenless_calls(&ids, DAY, SystemTime::now()).await;

    assert_eq!(answers.len(), 501);
    for id in &ids[..500] {
        let e = error(&answers, id);
        assert_eq!(e.kind, AwsErrorKind::PermissionDenied, "{e}");
        assert_eq!(e.code, "AccessDenied");
        assert!(e.message.contains("cloudwatch:GetMetricData"), "{e}");
    }
    assert_eq!(answer(&answers, &ids[500]), Ok(0.0));
    assert_eq!(calls(&metrics, "AccessDenied"), 1);
    assert_eq!(calls(&metrics, "ok"), 1);
    let denied = "imds_operator_aws_api_permission_errors_total{operation=\"GetMetricData\"} 1";
    assert!(metrics.encode().contains(denied));
}

/// Throttling and 5xx answers are `Transient`; throttling is counted as such.
#[tokio::test]
async fn throttling_and_server_errors_are_transient() {
    use double::{CloudWatchDouble, aws_error};
    let cw = CloudWatchDouble::start(vec![
        aws_error(400, "ThrottlingException", "Rate exceeded"),
        aws_error(503, "SomethingUnexpected", "try later"),
    ])
    .await;
    let (usage, metrics) = reader(cw.client());
    let ids = [instance_id(1)];
    for code in ["ThrottlingException", "SomethingUnexpected"] {
        let answers = usage.tokenless_calls(&ids, DAY, SystemTime::now()).await;
        let e = error(&answers, &ids[0]);
        assert_eq!((e.kind, e.code.as_str()), (AwsErrorKind::Transient, code), "{e}");
    }
    let throttled = "imds_operator_aws_api_throttled_total{operation=\"GetMetricData\"} 1";
    assert!(metrics.encode().contains(throttled));
}

/// A query answered `Forbidden` (no access to that metric) fails that instance alone, and so does
/// a query CloudWatch left out; neither is taken for zero calls.
#[tokio::test]
async fn forbidden_or_missing_queries_fail_only_their_instance() {
    use double::{CloudWatchDouble, page, result};
    let cw = CloudWatchDouble::start(vec![page(
        vec![result("q0", &[], "Forbidden"), result("q1", &[2.0], "Complete")],
        None,
    )])
    .await;
    let (usage, _) = reader(cw.client());
    let ids = [instance_id(1), instance_id(2), instance_id(3)];
    let answers = usage.tokenless_calls(&ids, DAY, SystemTime::now()).await;

    assert_eq!(error(&answers, &ids[0]).kind, AwsErrorKind::PermissionDenied);
    assert_eq!(answer(&answers, &ids[1]), Ok(2.0));
    assert_eq!(error(&answers, &ids[2]).code, "MissingResult");
}

/// No server at all: every id fails as `Transient`.
#[tokio::test]
async fn unreachable_endpoint_is_transient() -> Result<()> {
    let port = free_port().context("a free port")?;
    let (usage, _) = reader(sdk_client(&format!("http://127.0.0.1:{port}")));
    let ids = [instance_id(1), instance_id(2)];
    let answers = usage.tokenless_calls(&ids, DAY, SystemTime::now()).await;
    for id in &ids {
        let e = error(&answers, id);
        assert_eq!(
            (e.kind, e.code.as_str()),
            (AwsErrorKind::Transient, "DispatchFailure"),
            "{e}"
        );
    }
    Ok(())
}

/// No ids, no calls.
#[tokio::test]
async fn no_instances_no_calls() {
    let (usage, metrics) = reader(sdk_client("http://127.0.0.1:9"));
    assert!(usage.tokenless_calls(&[], DAY, SystemTime::now()).await.is_empty());
    assert_eq!(metrics.encode().matches("GetMetricData").count(), 0);
}
