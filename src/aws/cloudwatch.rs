//! IMDSv1 usage from CloudWatch: before an instance is moved to `httpTokens: required`, the
//! operator reads `MetadataNoToken` (successful IMDS calls made without a token; namespace
//! `AWS/EC2`, dimension `InstanceId`, statistic Sum) over a lookback window. An instance that made
//! tokenless calls is not enforced.
//!
//! The pure part (query ids, batching, the time window, summing results, error classification)
//! is separate from the one IO edge, [`UsageReader::tokenless_calls`], so that it can be tested
//! without CloudWatch.
//!
//! Safety first: when CloudWatch does not give a usable answer for an instance (the call failed,
//! the query was `Forbidden` or hit an `InternalError`, its result is missing, or a value is not a
//! finite number) the instance gets an error, never a 0 — a 0 would let it be enforced.

use super::attempts::AttemptMetrics;
use super::error::{AwsError, AwsErrorKind, Service, from_sdk};
use super::ratelimit::RateLimiter;
use crate::telemetry::metrics::Metrics;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricDataResult, MetricStat, StatusCode};
use aws_smithy_types::DateTime;
use imds_core::observation::{Failure, FailureKind};
use imds_core::usage::UsageSeries;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The CloudWatch namespace of the metric.
pub const NAMESPACE: &str = "AWS/EC2";
/// Successful IMDS calls made without a session token (IMDSv1).
pub const METRIC_NAME: &str = "MetadataNoToken";
/// IMDS calls without a session token that were refused because the instance requires IMDSv2:
/// after a move to `httpTokens: required`, the sign that something on the node broke.
pub const REJECTED_METRIC_NAME: &str = "MetadataNoTokenRejected";
/// The dimension that names the instance.
pub const DIMENSION: &str = "InstanceId";
/// The statistic read.
pub const STATISTIC: &str = "Sum";
/// The period, in seconds, of the datapoints read (EC2 basic monitoring publishes 5-minute data).
pub const PERIOD_SECS: i32 = 300;
/// The period used when the window starts more than [`FIVE_MINUTE_RETENTION`] ago: CloudWatch
/// returns no datapoints at all for older times unless the period is a multiple of one hour.
pub const LONG_PERIOD_SECS: i32 = 3600;
/// How long CloudWatch keeps 5-minute datapoints (63 days).
pub const FIVE_MINUTE_RETENTION: Duration = Duration::from_secs(63 * 24 * 3600);
/// At most this many metric queries in one GetMetricData call (CloudWatch's limit).
pub const QUERY_BATCH: usize = 500;
/// Default client-side rate of GetMetricData calls per second (CloudWatch allows 50).
pub const DEFAULT_PER_SECOND: f64 = 5.0;
/// Default client-side burst of GetMetricData calls.
pub const DEFAULT_BURST: u32 = 10;
/// The operation name, as recorded in metrics.
pub const OPERATION: &str = "GetMetricData";
/// Upper bound on pages of one batch (a 63-day window at 5 minutes needs about 90), so that a
/// service that keeps returning `NextToken` cannot keep the reader busy forever.
const MAX_PAGES: usize = 200;

/// A usage read that did not succeed, for one instance (or for every instance of its batch).
fn usage_error(kind: AwsErrorKind, code: &str, message: impl Into<String>) -> AwsError {
    AwsError::new(OPERATION, kind, code, message)
}

/// The query id of the `index`-th instance of a batch. CloudWatch wants ids matching
/// `^[a-z][a-zA-Z0-9_]*$`, which instance ids (`i-…`) do not.
pub fn query_id(index: usize) -> String {
    format!("q{index}")
}

/// The batch index a query id stands for ([`query_id`] backwards); `None` for anything else.
pub fn query_index(id: &str) -> Option<usize> {
    let digits = id.strip_prefix('q')?;
    // Only the canonical spelling: no sign, no leading zeros.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// The instance ids, sorted and without duplicates, in batches of at most [`QUERY_BATCH`].
pub fn batches(instance_ids: &[String]) -> Vec<Vec<String>> {
    let mut ids = instance_ids.to_vec();
    ids.sort();
    ids.dedup();
    ids.chunks(QUERY_BATCH).map(<[String]>::to_vec).collect()
}

/// The period for a window reaching `lookback` back: [`PERIOD_SECS`], or [`LONG_PERIOD_SECS`]
/// when the (period-aligned) start would be older than [`FIVE_MINUTE_RETENTION`].
pub fn period_for(lookback: Duration) -> i32 {
    let aligned = lookback.saturating_add(Duration::from_secs(PERIOD_SECS.unsigned_abs().into()));
    if aligned > FIVE_MINUTE_RETENTION {
        LONG_PERIOD_SECS
    } else {
        PERIOD_SECS
    }
}

/// The window `[start, end)` in seconds since the Unix epoch that covers `[now - lookback, now]`,
/// widened to whole periods (CloudWatch's advice for GetMetricData; the start moves back by less
/// than one period, which may count a few older calls but never misses any). `end > start`.
pub fn window(now: SystemTime, lookback: Duration, period_secs: i32) -> (u64, u64) {
    let period = u64::from(period_secs.unsigned_abs().max(1));
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let from = now.saturating_sub(lookback).as_secs();
    let start = from - from % period;
    let end = (now.as_secs() / period).saturating_add(1).saturating_mul(period);
    (start, end.max(start.saturating_add(period)))
}

/// One Sum query of `metric_name` ([`METRIC_NAME`] or [`REJECTED_METRIC_NAME`]) per instance,
/// with ids from [`query_id`] in batch order.
pub fn build_queries(batch: &[String], metric_name: &str, period_secs: i32) -> Vec<MetricDataQuery> {
    batch
        .iter()
        .enumerate()
        .map(|(index, instance_id)| {
            let metric = Metric::builder()
                .namespace(NAMESPACE)
                .metric_name(metric_name)
                .dimensions(Dimension::builder().name(DIMENSION).value(instance_id).build())
                .build();
            MetricDataQuery::builder()
                .id(query_id(index))
                .metric_stat(
                    MetricStat::builder()
                        .metric(metric)
                        .period(period_secs)
                        .stat(STATISTIC)
                        .build(),
                )
                .return_data(true)
                .build()
        })
        .collect()
}

/// What a batch has gathered so far for one query.
#[derive(Clone, Debug, PartialEq)]
enum Tally {
    /// No result for this query yet.
    Unseen,
    /// The values of every page so far, by period start (Unix seconds).
    Series(BTreeMap<i64, f64>),
    /// A result said the query failed; later pages do not undo it.
    Failed(AwsError),
}

/// The running totals of one batch over the pages of its GetMetricData calls, per period.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchTotals {
    period_secs: u64,
    tallies: Vec<Tally>,
}

impl BatchTotals {
    /// Nothing seen yet for a batch of `len` instances read at `period_secs`.
    pub fn new(len: usize, period_secs: i32) -> BatchTotals {
        BatchTotals {
            period_secs: u64::from(period_secs.unsigned_abs()),
            tallies: vec![Tally::Unseen; len],
        }
    }

    /// Adds one page of results. Values of the same query on several pages add up; results for
    /// ids this batch did not ask for are ignored.
    pub fn add_page(&mut self, results: &[MetricDataResult]) {
        for result in results {
            let Some(tally) = result.id().and_then(query_index).and_then(|i| self.tallies.get_mut(i)) else {
                tracing::debug!(id = ?result.id(), "GetMetricData result for an unknown query id");
                continue;
            };
            if matches!(tally, Tally::Failed(_)) {
                continue;
            }
            if let Some(err) = status_error(result) {
                *tally = Tally::Failed(err);
                continue;
            }
            if !matches!(tally, Tally::Series(_)) {
                *tally = Tally::Series(BTreeMap::new());
            }
            if let Tally::Series(series) = tally {
                add_points(series, result);
            }
        }
    }

    /// The answer for every instance of `batch` (the batch these totals were made for).
    pub fn finish(self, batch: &[String]) -> Vec<(String, Result<UsageSeries, AwsError>)> {
        let period_secs = self.period_secs;
        batch
            .iter()
            .zip(self.tallies)
            .map(|(id, tally)| {
                let answer = match tally {
                    Tally::Series(points) => match points.values().find(|v| !v.is_finite()) {
                        None => Ok(UsageSeries {
                            period_secs,
                            points: points.into_iter().collect(),
                        }),
                        Some(bad) => Err(usage_error(
                            AwsErrorKind::Other,
                            "InvalidValue",
                            format!("{METRIC_NAME} of {id} has a datapoint of {bad}"),
                        )),
                    },
                    Tally::Unseen => Err(usage_error(
                        AwsErrorKind::Other,
                        "MissingResult",
                        format!("CloudWatch returned no result for {id}"),
                    )),
                    Tally::Failed(err) => Err(err),
                };
                (id.clone(), answer)
            })
            .collect()
    }
}

/// Adds a result's datapoints (values paired with their timestamps) to `series`. A value
/// without a timestamp is kept at time 0 (it counts in totals, and as old for boot windows).
fn add_points(series: &mut BTreeMap<i64, f64>, result: &MetricDataResult) {
    let times = result
        .timestamps()
        .iter()
        .map(|t| Some(t.secs()))
        .chain(std::iter::repeat(None));
    for (value, at) in result.values().iter().zip(times) {
        *series.entry(at.unwrap_or(0)).or_insert(0.0) += value;
    }
}

/// The error a result's status code stands for (`Complete`, `PartialData` and no status carry
/// data).
fn status_error(result: &MetricDataResult) -> Option<AwsError> {
    let (kind, code) = match result.status_code() {
        None | Some(StatusCode::Complete) | Some(StatusCode::PartialData) => return None,
        Some(StatusCode::Forbidden) => (AwsErrorKind::PermissionDenied, "Forbidden"),
        Some(StatusCode::InternalError) => (AwsErrorKind::Transient, "InternalError"),
        Some(other) => (AwsErrorKind::Other, other.as_str()),
    };
    let message = result
        .messages()
        .iter()
        .map(|m| format!("{}: {}", m.code().unwrap_or_default(), m.value().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ");
    Some(usage_error(kind, code, message))
}

/// What CloudWatch said of one instance over one lookback.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageAnswer {
    /// The instance.
    pub instance_id: String,
    /// The lookback read.
    pub lookback: Duration,
    /// `MetadataNoToken` per period over it, or why it could not be read.
    pub calls: Result<UsageSeries, Failure>,
}

/// Reads `MetadataNoToken` from CloudWatch, rate-limited and counted.
#[derive(Clone, Debug)]
pub struct UsageReader {
    client: aws_sdk_cloudwatch::Client,
    metrics: Arc<Metrics>,
    limiter: Arc<RateLimiter>,
}

impl UsageReader {
    /// Wraps an SDK client, with a polite client-side limit of [`DEFAULT_PER_SECOND`] calls per
    /// second and a burst of [`DEFAULT_BURST`].
    pub fn new(client: aws_sdk_cloudwatch::Client, metrics: Arc<Metrics>) -> Self {
        Self::with_rate_limit(client, metrics, DEFAULT_BURST, DEFAULT_PER_SECOND)
    }

    /// Like [`UsageReader::new`] with another client-side limit.
    pub fn with_rate_limit(
        client: aws_sdk_cloudwatch::Client,
        metrics: Arc<Metrics>,
        burst: u32,
        per_second: f64,
    ) -> Self {
        let config = client
            .config()
            .to_builder()
            .interceptor(AttemptMetrics::new(metrics.clone()))
            .build();
        UsageReader {
            client: aws_sdk_cloudwatch::Client::from_conf(config),
            metrics,
            limiter: Arc::new(RateLimiter::new(burst, per_second)),
        }
    }

    /// MetadataNoToken per instance and period over [now - lookback, now]. One GetMetricData call
    /// per up to 500 metric queries (CloudWatch's limit), paginated with NextToken. An instance with
    /// no datapoints has none (0 calls). Errors are per batch: every id of a failed batch maps to
    /// Err.
    ///
    /// The window is widened to whole periods (see [`window`]). Every distinct requested id gets
    /// an answer; a query that CloudWatch answers `Forbidden` or `InternalError`, or does not
    /// answer at all, maps to Err for that instance alone.
    pub async fn tokenless_calls(
        &self,
        instance_ids: &[String],
        lookback: Duration,
        now: SystemTime,
    ) -> HashMap<String, Result<UsageSeries, AwsError>> {
        self.calls(METRIC_NAME, instance_ids, lookback, now).await
    }

    /// Like [`UsageReader::tokenless_calls`], for [`REJECTED_METRIC_NAME`]: the IMDSv1 calls EC2
    /// refused (the verification after a move to `httpTokens: required`).
    pub async fn rejected_calls(
        &self,
        instance_ids: &[String],
        lookback: Duration,
        now: SystemTime,
    ) -> HashMap<String, Result<UsageSeries, AwsError>> {
        self.calls(REJECTED_METRIC_NAME, instance_ids, lookback, now).await
    }

    async fn calls(
        &self,
        metric_name: &str,
        instance_ids: &[String],
        lookback: Duration,
        now: SystemTime,
    ) -> HashMap<String, Result<UsageSeries, AwsError>> {
        let period = period_for(lookback);
        let (start, end) = window(now, lookback, period);
        let mut out = HashMap::with_capacity(instance_ids.len());
        for batch in batches(instance_ids) {
            let queries = build_queries(&batch, metric_name, period);
            match self.read_batch(&batch, queries, period, start, end).await {
                Ok(totals) => out.extend(totals.finish(&batch)),
                Err(err) => {
                    tracing::debug!(instances = batch.len(), error = %err, "usage batch failed");
                    out.extend(batch.into_iter().map(|id| (id, Err(err.clone()))));
                }
            }
        }
        out
    }

    /// Reads every instance of `wanted` (instance ids by lookback) once, at `now`. An instance
    /// CloudWatch did not answer for gets an error, never a 0.
    pub async fn read_wanted(&self, wanted: BTreeMap<Duration, Vec<String>>, now: SystemTime) -> Vec<UsageAnswer> {
        let mut out = Vec::new();
        for (lookback, ids) in wanted {
            let answers = self.tokenless_calls(&ids, lookback, now).await;
            for instance_id in ids {
                let calls = match answers.get(&instance_id) {
                    Some(Ok(calls)) => Ok(calls.clone()),
                    Some(Err(e)) => Err(Failure {
                        kind: e.failure_kind(),
                        message: e.to_string(),
                    }),
                    None => Err(Failure {
                        kind: FailureKind::Other,
                        message: "no answer from CloudWatch".to_string(),
                    }),
                };
                out.push(UsageAnswer {
                    instance_id,
                    lookback,
                    calls,
                });
            }
        }
        out
    }

    async fn read_batch(
        &self,
        batch: &[String],
        queries: Vec<MetricDataQuery>,
        period: i32,
        start: u64,
        end: u64,
    ) -> Result<BatchTotals, AwsError> {
        let secs = |s: u64| DateTime::from_secs(i64::try_from(s).unwrap_or(i64::MAX));
        let mut totals = BatchTotals::new(batch.len(), period);
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            self.limiter.acquire().await;
            let result = self
                .client
                .get_metric_data()
                .set_metric_data_queries(Some(queries.clone()))
                .start_time(secs(start))
                .end_time(secs(end))
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| from_sdk(Service::CloudWatch, OPERATION, e));
            let rate = match &result {
                Ok(_) => {
                    self.metrics.aws_call(OPERATION, "ok");
                    self.limiter.succeeded().await
                }
                Err(e) => {
                    self.metrics.aws_call(OPERATION, &e.code);
                    if e.is_throttling() {
                        self.limiter.throttled().await
                    } else {
                        self.limiter.succeeded().await
                    }
                }
            };
            self.metrics.aws_client_rate(OPERATION, rate);
            let page = result?;
            totals.add_page(page.metric_data_results());
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_string()),
                _ => return Ok(totals),
            }
        }
        Err(usage_error(
            AwsErrorKind::Other,
            "TooManyPages",
            format!("GetMetricData still paginating after {MAX_PAGES} pages"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_core::plan::guards::DEFAULT_LOOKBACK;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i-{i:017x}")).collect()
    }

    fn result(id: &str, values: &[f64], status: Option<StatusCode>) -> MetricDataResult {
        MetricDataResult::builder()
            .id(id)
            .set_values(Some(values.to_vec()))
            .set_status_code(status)
            .build()
    }

    fn is_valid_query_id(id: &str) -> bool {
        let mut chars = id.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    #[test]
    fn query_ids_are_valid_and_round_trip() {
        for i in [0, 1, 9, 10, 499, 12_345] {
            let id = query_id(i);
            assert!(is_valid_query_id(&id), "{id}");
            assert_eq!(query_index(&id), Some(i));
        }
        for bad in ["", "q", "q-1", "q01", "q1a", "Q1", "x1", "i-0123", "q+1"] {
            assert_eq!(query_index(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn queries_read_the_sum_of_metadata_no_token_per_instance() {
        let batch = ids(3);
        let queries = build_queries(&batch, METRIC_NAME, PERIOD_SECS);
        assert_eq!(queries.len(), 3);
        for (i, q) in queries.iter().enumerate() {
            assert_eq!(q.id(), Some(query_id(i).as_str()));
            assert_eq!(q.return_data(), Some(true));
            let stat = q.metric_stat().expect("metric stat");
            assert_eq!(stat.period(), Some(300));
            assert_eq!(stat.stat(), Some("Sum"));
            let metric = stat.metric().expect("metric");
            assert_eq!(metric.namespace(), Some("AWS/EC2"));
            assert_eq!(metric.metric_name(), Some("MetadataNoToken"));
            let dims = metric.dimensions();
            assert_eq!(dims.len(), 1);
            assert_eq!(dims[0].name(), Some("InstanceId"));
            assert_eq!(dims[0].value(), Some(batch[i].as_str()));
        }
    }

    #[test]
    fn batches_of_at_most_500_without_duplicates() {
        let mut input = ids(1201);
        input.extend(ids(10)); // duplicates
        input.reverse();
        let got = batches(&input);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 201]);
        let flat: Vec<String> = got.concat();
        assert_eq!(flat, ids(1201), "sorted, each once");
        assert!(batches(&[]).is_empty());
        assert_eq!(batches(&ids(500)).len(), 1);
        assert_eq!(batches(&ids(501)).len(), 2);
    }

    #[test]
    fn window_is_aligned_to_whole_periods() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_123);
        let (start, end) = window(now, DEFAULT_LOOKBACK, PERIOD_SECS);
        assert_eq!(start, 1_699_913_700, "rounded down from 1_699_913_723");
        assert_eq!(end, 1_700_000_400, "rounded up from now");
        assert!(start <= 1_700_000_123 - 86_400);

        // Already aligned, zero lookback: still a non-empty window containing now.
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        assert_eq!(window(now, Duration::ZERO, PERIOD_SECS), (1_700_000_100, 1_700_000_400));
        // A lookback reaching before the epoch starts at the epoch.
        assert_eq!(window(now, Duration::MAX, PERIOD_SECS).0, 0);
        assert_eq!(window(UNIX_EPOCH, Duration::ZERO, 300), (0, 300));
    }

    #[test]
    fn long_lookbacks_use_hourly_periods() {
        assert_eq!(period_for(DEFAULT_LOOKBACK), 300);
        assert_eq!(period_for(Duration::from_secs(62 * 86_400)), 300);
        assert_eq!(period_for(FIVE_MINUTE_RETENTION), 3600);
        assert_eq!(period_for(Duration::from_secs(90 * 86_400)), 3600);
        assert_eq!(period_for(Duration::MAX), 3600);
    }

    #[test]
    fn sums_values_per_query_across_pages() {
        let batch = ids(4);
        let mut totals = BatchTotals::new(batch.len(), PERIOD_SECS);
        totals.add_page(&[
            result("q0", &[3.0, 4.0], Some(StatusCode::PartialData)),
            result("q1", &[], Some(StatusCode::Complete)),
            result("q2", &[1.0], None),
            result("q99", &[100.0], None), // not ours
            result("bogus", &[100.0], None),
        ]);
        totals.add_page(&[
            result("q0", &[0.5], Some(StatusCode::Complete)),
            result("q3", &[], Some(StatusCode::Complete)),
        ]);
        let got: HashMap<_, _> = totals.finish(&batch).into_iter().collect();
        let total = |i: usize| got[&batch[i]].as_ref().map(UsageSeries::total).expect("an answer");
        assert_eq!(total(0), 7.5);
        assert_eq!(total(1), 0.0, "no datapoints is zero");
        assert_eq!(total(2), 1.0);
        assert_eq!(total(3), 0.0);
    }

    #[test]
    fn datapoints_keep_their_periods() {
        let batch = ids(1);
        let mut totals = BatchTotals::new(1, PERIOD_SECS);
        let at = |s: i64| DateTime::from_secs(s);
        let page = |values: &[f64], times: &[i64]| {
            MetricDataResult::builder()
                .id("q0")
                .set_values(Some(values.to_vec()))
                .set_timestamps(Some(times.iter().map(|t| at(*t)).collect()))
                .build()
        };
        totals.add_page(&[page(&[2.0, 1.0], &[600, 300])]);
        totals.add_page(&[page(&[4.0], &[600])]);
        let got = totals.finish(&batch).remove(0).1.expect("an answer");
        assert_eq!(
            got,
            UsageSeries {
                period_secs: 300,
                points: vec![(300, 1.0), (600, 6.0)]
            }
        );
    }

    #[test]
    fn unusable_answers_are_errors_not_zero() {
        let batch = ids(5);
        let mut totals = BatchTotals::new(batch.len(), PERIOD_SECS);
        let forbidden = MetricDataResult::builder()
            .id("q0")
            .status_code(StatusCode::Forbidden)
            .messages(
                aws_sdk_cloudwatch::types::MessageData::builder()
                    .code("Forbidden")
                    .value("no access")
                    .build(),
            )
            .build();
        totals.add_page(&[
            forbidden,
            result("q1", &[2.0], Some(StatusCode::InternalError)),
            result("q3", &[f64::NAN], Some(StatusCode::Complete)),
            result("q4", &[1.0], Some(StatusCode::from("SomethingNew"))),
        ]);
        // A later page does not undo a failure.
        totals.add_page(&[result("q1", &[1.0], Some(StatusCode::Complete))]);
        let got: HashMap<_, _> = totals.finish(&batch).into_iter().collect();
        let err = |i: usize| got[&batch[i]].clone().expect_err("an error");
        assert_eq!(err(0).kind, AwsErrorKind::PermissionDenied);
        assert_eq!(err(0).message, "Forbidden: no access");
        assert_eq!(err(1).kind, AwsErrorKind::Transient);
        assert_eq!(err(1).code, "InternalError");
        assert_eq!(err(2).code, "MissingResult", "never answered");
        assert_eq!(err(3).code, "InvalidValue");
        assert_eq!(err(4).code, "SomethingNew");
        assert_eq!(err(4).kind, AwsErrorKind::Other);
    }

    #[test]
    fn sdk_errors_are_classified() {
        use aws_sdk_cloudwatch::config::http::HttpResponse;
        use aws_sdk_cloudwatch::error::{ErrorMetadata, SdkError};
        use aws_sdk_cloudwatch::operation::get_metric_data::GetMetricDataError;
        use aws_smithy_types::body::SdkBody;
        let from_sdk = |e| from_sdk(Service::CloudWatch, OPERATION, e);

        let service = |code: &str, status: u16| {
            let raw = HttpResponse::new(status.try_into().expect("a valid status"), SdkBody::empty());
            let err = GetMetricDataError::generic(ErrorMetadata::builder().code(code).message("m").build());
            from_sdk(SdkError::service_error(err, raw))
        };
        let denied = service("AccessDenied", 403);
        assert_eq!(
            (denied.kind, denied.code.as_str()),
            (AwsErrorKind::PermissionDenied, "AccessDenied")
        );
        assert_eq!(denied.message, "m");
        assert_eq!(service("Whatever", 502).kind, AwsErrorKind::Transient);
        assert_eq!(service("InvalidParameterCombination", 400).kind, AwsErrorKind::Other);

        // An answer the SDK could not read has no code; the message says why, briefly.
        let raw = HttpResponse::new(200.try_into().expect("a valid status"), SdkBody::from("garbage"));
        let unreadable = from_sdk(SdkError::service_error(
            GetMetricDataError::unhandled("unexpected type u32"),
            raw,
        ));
        assert_eq!(
            (unreadable.kind, unreadable.code.as_str()),
            (AwsErrorKind::Other, "Unknown")
        );
        assert_eq!(unreadable.message, "HTTP 200: unhandled error: unexpected type u32");

        let timeout = from_sdk(SdkError::timeout_error("slow"));
        assert_eq!(
            (timeout.kind, timeout.code.as_str()),
            (AwsErrorKind::Transient, "Timeout")
        );
        let construction = from_sdk(SdkError::construction_failure("bad input"));
        assert_eq!(
            (construction.kind, construction.code.as_str()),
            (AwsErrorKind::Other, "ClientError")
        );
    }

    #[test]
    fn errors_display_code_and_message() {
        let e = usage_error(
            AwsErrorKind::PermissionDenied,
            "AccessDenied",
            "not authorized to perform cloudwatch:GetMetricData",
        );
        assert_eq!(
            e.to_string(),
            "GetMetricData: AccessDenied: not authorized to perform cloudwatch:GetMetricData"
        );
    }
}
