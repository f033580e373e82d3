//! Property tests of how the operator reads AWS answers: EC2's `InstanceMetadataOptionsResponse`
//! (`aws::ec2::observed_from`) and the pure half of the CloudWatch reader (`aws::cloudwatch`:
//! query ids, batches, the time window, summing `MetricDataResult` pages). No IO.
//!
//! Each property states its reference model or invariant in its doc comment. Cases per property:
//! `PROPTEST_CASES` when set (long runs), else the small count given to [`config`]. How to run
//! long, and how to replay a failure: `docs/fuzzing.md`.

use aws_sdk_cloudwatch::types::{MessageData, MetricDataResult, StatusCode};
use aws_sdk_ec2::types::{
    HttpTokensState, InstanceMetadataEndpointState, InstanceMetadataOptionsResponse, InstanceMetadataOptionsState,
    InstanceMetadataProtocolState, InstanceMetadataTagsState,
};
use imds_core::api::{HttpTokens, MetadataOptions, Toggle};
use imds_core::options::{ApplyState, FullOptions, ObservedOptions};
use imds_operator::aws::AwsErrorKind;
use imds_operator::aws::cloudwatch::{
    BatchTotals, FIVE_MINUTE_RETENTION, LONG_PERIOD_SECS, PERIOD_SECS, QUERY_BATCH, batches, period_for, query_id,
    query_index, window,
};
use imds_operator::aws::ec2::observed_from;
use proptest::prelude::*;
use proptest::test_runner::{FailurePersistence, FileFailurePersistence};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `cases` per property unless `PROPTEST_CASES` is set: `ProptestConfig::with_cases` would
/// override the variable, so it is read here. Failing seeds are appended to
/// `proptest-regressions/aws_mapping_properties.txt` and replayed first on every run (unless
/// `PROPTEST_DISABLE_FAILURE_PERSISTENCE` is set).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let defaults = ProptestConfig::default();
    let failure_persistence = defaults.failure_persistence.as_ref().map(|_| {
        Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/aws_mapping_properties.txt",
        )) as Box<dyn FailurePersistence>
    });
    ProptestConfig {
        cases,
        failure_persistence,
        ..defaults
    }
}

// ---------------------------------------------------------------------------------------------
// EC2: InstanceMetadataOptionsResponse → ObservedOptions
// ---------------------------------------------------------------------------------------------

/// An enum value as EC2 may send it: the known spellings, near misses, values added after this
/// SDK was generated, or absent.
fn ec2_text() -> impl Strategy<Value = Option<String>> {
    let known = vec![
        "required",
        "optional",
        "enabled",
        "disabled",
        "pending",
        "applied",
        "Required",
        "ENABLED",
        "",
        "no-preference",
    ];
    prop::option::weighted(
        0.85,
        prop_oneof![3 => prop::sample::select(known).prop_map(String::from), 1 => "\\PC{0,16}"],
    )
}

fn hop_limit() -> impl Strategy<Value = Option<i32>> {
    prop::option::weighted(0.85, prop_oneof![-3..=67i32, any::<i32>()])
}

/// The SDK response, built with its builder from arbitrary values.
#[derive(Clone, Debug)]
struct Response {
    state: Option<String>,
    tokens: Option<String>,
    hop: Option<i32>,
    endpoint: Option<String>,
    ipv6: Option<String>,
    tags: Option<String>,
}

impl Response {
    fn build(&self) -> InstanceMetadataOptionsResponse {
        InstanceMetadataOptionsResponse::builder()
            .set_state(self.state.as_deref().map(InstanceMetadataOptionsState::from))
            .set_http_tokens(self.tokens.as_deref().map(HttpTokensState::from))
            .set_http_put_response_hop_limit(self.hop)
            .set_http_endpoint(self.endpoint.as_deref().map(InstanceMetadataEndpointState::from))
            .set_http_protocol_ipv6(self.ipv6.as_deref().map(InstanceMetadataProtocolState::from))
            .set_instance_metadata_tags(self.tags.as_deref().map(InstanceMetadataTagsState::from))
            .build()
    }
}

fn response() -> impl Strategy<Value = Response> {
    (ec2_text(), ec2_text(), hop_limit(), ec2_text(), ec2_text(), ec2_text()).prop_map(
        |(state, tokens, hop, endpoint, ipv6, tags)| Response {
            state,
            tokens,
            hop,
            endpoint,
            ipv6,
            tags,
        },
    )
}

/// Reference: EC2's spellings, exactly; anything else (unknown, misspelled, absent) is `None`,
/// "the field is left out" in `ObservedOptions`' doc.
fn model_toggle(text: &Option<String>) -> Option<Toggle> {
    match text.as_deref() {
        Some("enabled") => Some(Toggle::Enabled),
        Some("disabled") => Some(Toggle::Disabled),
        _ => None,
    }
}

fn model_observed(r: &Response) -> ObservedOptions {
    ObservedOptions {
        values: MetadataOptions {
            http_tokens: match r.tokens.as_deref() {
                Some("required") => Some(HttpTokens::Required),
                Some("optional") => Some(HttpTokens::Optional),
                _ => None,
            },
            http_put_response_hop_limit: r.hop,
            http_endpoint: model_toggle(&r.endpoint),
            http_protocol_ipv6: model_toggle(&r.ipv6),
            instance_metadata_tags: model_toggle(&r.tags),
        },
        // Only `pending` holds further changes back; `applied`, unknown and absent do not.
        state: if r.state.as_deref() == Some("pending") {
            ApplyState::Pending
        } else {
            ApplyState::Applied
        },
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// `observed_from` never panics and equals the reference model: known spellings map to
    /// their values, unknown and absent ones to `None`, a state other than `pending` is
    /// `Applied`; a hop limit in EC2's range 1..=64 is taken as it is. No response: all `None`.
    #[test]
    fn observed_from_maps_known_values_and_drops_unknown(r in response()) {
        let observed = observed_from(Some(&r.build()));
        let mut want = model_observed(&r);
        if !r.hop.is_some_and(|h| (1..=64).contains(&h)) {
            // Out of EC2's range: not specified by the code (see the ignored property below).
            want.values.http_put_response_hop_limit = observed.values.http_put_response_hop_limit;
        }
        prop_assert_eq!(observed, want);
        prop_assert_eq!(observed_from(None), ObservedOptions::default());
    }

    /// Finding (see docs/fuzzing.md): a hop limit outside 1..=64 passes through `observed_from`
    /// unchecked, into the request planned for the instance (desired merged over observed), whose
    /// compact form the record parser then refuses (`RecordInvalid`: the node is left alone).
    /// Property: every observation completes to a request that `FullOptions::from_tag_value`
    /// reads back.
    #[test]
    fn every_observation_completes_to_a_storable_request(r in response()) {
        let observed = observed_from(Some(&r.build()));
        let request = FullOptions::completed(&observed.values);
        prop_assert_eq!(FullOptions::from_tag_value(&request.to_tag_value()), Some(request));
    }
}

// ---------------------------------------------------------------------------------------------
// CloudWatch: query ids, batches, window
// ---------------------------------------------------------------------------------------------

/// CloudWatch's rule for a query id: `^[a-z][a-zA-Z0-9_]*$`, at most 255 characters.
fn is_valid_cloudwatch_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 255
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reference for `query_index`: exactly `q` and the canonical decimal spelling of a `usize`
/// (no sign, no leading zeros).
fn model_query_index(id: &str) -> Option<usize> {
    let digits = id.strip_prefix('q')?;
    let canonical = digits == "0" || (!digits.is_empty() && !digits.starts_with('0'));
    if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 20 {
        return None;
    }
    let n: u128 = digits.bytes().fold(0, |n, b| n * 10 + u128::from(b - b'0'));
    usize::try_from(n).ok()
}

fn query_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "q[+-]?0{0,2}[0-9]{0,22}",
        "[qQxi][0-9a-z_\\-]{0,6}",
        any::<usize>().prop_map(query_id),
        any::<String>(),
    ]
}

/// Instant `secs`.`nanos` after the epoch, when `SystemTime` can hold it.
fn instant(secs: u64, nanos: u32) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn now_secs() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1_500_000_000u64..2_500_000_000, 1 => 0u64..100_000, 1 => 0..=(i64::MAX as u64)]
}

fn lookback() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => (0u64..=400 * 86_400, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        1 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        1 => Just(Duration::MAX),
        1 => Just(FIVE_MINUTE_RETENTION),
    ]
}

fn period() -> impl Strategy<Value = i32> {
    prop_oneof![Just(PERIOD_SECS), Just(LONG_PERIOD_SECS), -5..=5i32, any::<i32>()]
}

const NANOS: u128 = 1_000_000_000;

proptest! {
    #![proptest_config(config(1024))]

    /// Query ids round trip (`query_index(query_id(i)) == i`) and are valid CloudWatch ids.
    #[test]
    fn query_ids_round_trip_and_are_valid(i: usize) {
        let id = query_id(i);
        prop_assert!(is_valid_cloudwatch_id(&id), "{}", id);
        prop_assert_eq!(query_index(&id), Some(i));
    }

    /// `query_index` reads exactly the canonical ids (the reference model), so distinct ids
    /// never name the same query: whatever it reads is `query_id` of the index.
    #[test]
    fn query_index_reads_only_canonical_ids(id in query_text()) {
        let index = query_index(&id);
        prop_assert_eq!(index, model_query_index(&id), "{:?}", id);
        if let Some(i) = index {
            prop_assert_eq!(query_id(i), id);
        }
    }

    /// The window `[start, end)` is aligned to whole periods (|period|, at least 1 s), contains
    /// `[now - lookback, now]` (from the epoch when the lookback reaches before it), starts less
    /// than one period before `now - lookback` and ends at most one period after `now`.
    #[test]
    fn window_is_aligned_and_contains_the_lookback(
        secs in now_secs(),
        nanos in 0u32..1_000_000_000,
        lookback in lookback(),
        period in period(),
    ) {
        let Some(now) = instant(secs, nanos) else { return Ok(()) };
        let (start, end) = window(now, lookback, period);
        let p = u64::from(period.unsigned_abs().max(1));
        prop_assert_eq!((start % p, end % p), (0, 0), "aligned");
        prop_assert!(start < end);
        let now_ns = u128::from(secs) * NANOS + u128::from(nanos);
        let from_ns = now_ns.saturating_sub(lookback.as_nanos());
        let (start_ns, end_ns, p_ns) = (u128::from(start) * NANOS, u128::from(end) * NANOS, u128::from(p) * NANOS);
        prop_assert!(start_ns <= from_ns, "starts at or before now - lookback");
        prop_assert!(start_ns + p_ns > from_ns, "starts less than one period before it");
        prop_assert!(end_ns > now_ns, "contains now");
        prop_assert!(end_ns <= now_ns + p_ns, "ends at most one period after now");
    }

    /// Times before the epoch do not panic (they read as the epoch).
    #[test]
    fn window_before_the_epoch_never_panics(
        back in 1u64..=(i64::MAX as u64 / 2),
        lookback in lookback(),
        period in period(),
    ) {
        if let Some(now) = UNIX_EPOCH.checked_sub(Duration::from_secs(back)) {
            prop_assert_eq!(window(now, lookback, period), window(UNIX_EPOCH, lookback, period));
        }
    }

    /// Five-minute periods only where CloudWatch still keeps five-minute data: with
    /// `period_for(lookback)` = 300 the window starts at most 63 days before now; the hourly
    /// period is used only when a five-minute window would start earlier; and the period never
    /// shrinks as the lookback grows.
    #[test]
    fn periods_fit_the_five_minute_retention(
        a in lookback(),
        b in lookback(),
        secs in 1_500_000_000u64..2_500_000_000,
    ) {
        let now = instant(secs, 0).expect("in range");
        let period = period_for(a);
        prop_assert!(period == PERIOD_SECS || period == LONG_PERIOD_SECS);
        let (start, _) = window(now, a, PERIOD_SECS);
        let reaches = Duration::from_secs(secs - start);
        if period == PERIOD_SECS {
            prop_assert!(reaches <= FIVE_MINUTE_RETENTION, "lookback {a:?} reaches {reaches:?} back");
        } else {
            prop_assert!(a.saturating_add(Duration::from_secs(300)) > FIVE_MINUTE_RETENTION);
        }
        let (short, long) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(period_for(short) <= period_for(long));
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Batches cover every distinct id exactly once, in sorted order, each batch holding 1 to
    /// 500 ids, in the fewest batches (⌈distinct / 500⌉: all full but the last).
    #[test]
    fn batches_cover_every_id_exactly_once(
        ids in prop::collection::vec((0u16..2000).prop_map(|n| format!("i-{n:017x}")), 0..1600),
    ) {
        let distinct: BTreeSet<&String> = ids.iter().collect();
        let got = batches(&ids);
        let flat: Vec<&String> = got.iter().flatten().collect();
        prop_assert!(flat.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
        prop_assert_eq!(flat.into_iter().collect::<BTreeSet<_>>(), distinct.clone());
        prop_assert_eq!(got.len(), distinct.len().div_ceil(QUERY_BATCH));
        for (i, batch) in got.iter().enumerate() {
            prop_assert!(!batch.is_empty() && batch.len() <= QUERY_BATCH);
            prop_assert!(i + 1 == got.len() || batch.len() == QUERY_BATCH);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CloudWatch: BatchTotals over GetMetricData pages
// ---------------------------------------------------------------------------------------------

/// One `MetricDataResult` as CloudWatch may send it.
#[derive(Clone, Debug)]
struct CwResult {
    id: Option<String>,
    status: Option<String>,
    values: Option<Vec<f64>>,
    messages: Vec<(Option<String>, Option<String>)>,
}

impl CwResult {
    fn build(&self) -> MetricDataResult {
        let messages = self
            .messages
            .iter()
            .map(|(code, value)| {
                MessageData::builder()
                    .set_code(code.clone())
                    .set_value(value.clone())
                    .build()
            })
            .collect();
        MetricDataResult::builder()
            .set_id(self.id.clone())
            .set_status_code(self.status.as_deref().map(StatusCode::from))
            .set_values(self.values.clone())
            .set_messages(Some(messages))
            .build()
    }
}

/// Values: whole numbers (so that sums are exact in any order), sometimes NaN or ±infinity.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        20 => (-1000i32..1000).prop_map(f64::from),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
    ]
}

/// Results for a batch of `n`: ids of the batch and just past it, non-canonical and foreign
/// ids, no id; known, unknown and no status codes; values or none.
fn result_for(n: usize) -> impl Strategy<Value = CwResult> {
    let id = prop_oneof![
        6 => (0..n + 2).prop_map(query_id),
        1 => prop::sample::select(vec!["q00", "q01", "Q0", "q-1", "q+1", "x0", ""]).prop_map(String::from),
        1 => "\\PC{0,6}",
    ];
    let status = prop_oneof![
        3 => prop::sample::select(vec!["Complete", "PartialData", "Forbidden", "InternalError"]).prop_map(String::from),
        1 => "[A-Za-z]{0,12}",
    ];
    let message = (prop::option::of("\\PC{0,8}"), prop::option::of("\\PC{0,8}"));
    (
        prop::option::weighted(0.95, id),
        prop::option::of(status),
        prop::option::weighted(0.9, prop::collection::vec(value(), 0..5)),
        prop::collection::vec(message, 0..2),
    )
        .prop_map(|(id, status, values, messages)| CwResult {
            id,
            status,
            values,
            messages,
        })
}

fn pages() -> impl Strategy<Value = (usize, Vec<Vec<CwResult>>)> {
    (0usize..8).prop_flat_map(|n| {
        let page = prop::collection::vec(result_for(n), 0..8);
        (Just(n), prop::collection::vec(page, 0..5))
    })
}

/// What a status code means (`None`: the result carries data), by CloudWatch's documentation.
fn model_status(status: Option<&str>) -> Option<(String, AwsErrorKind)> {
    match status {
        None | Some("Complete") | Some("PartialData") => None,
        Some("Forbidden") => Some(("Forbidden".into(), AwsErrorKind::PermissionDenied)),
        Some("InternalError") => Some(("InternalError".into(), AwsErrorKind::Transient)),
        Some(other) => Some((other.into(), AwsErrorKind::Other)),
    }
}

/// Reference answer for the `i`-th instance: the results whose id is exactly `q<i>`, over all
/// pages in order. Any failing status: that failure (the first one; a later page does not undo
/// it). No result: `MissingResult`. A non-finite value: `InvalidValue`. Else the sum of every
/// value, exact (whole numbers); no values is 0.
fn model_answer(i: usize, pages: &[Vec<CwResult>]) -> Result<f64, (String, AwsErrorKind)> {
    let mine: Vec<&CwResult> = pages
        .iter()
        .flatten()
        .filter(|r| r.id.as_deref() == Some(format!("q{i}").as_str()))
        .collect();
    if let Some(failure) = mine.iter().find_map(|r| model_status(r.status.as_deref())) {
        return Err(failure);
    }
    if mine.is_empty() {
        return Err(("MissingResult".into(), AwsErrorKind::Other));
    }
    let values: Vec<f64> = mine.iter().flat_map(|r| r.values.iter().flatten().copied()).collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(("InvalidValue".into(), AwsErrorKind::Other));
    }
    let sum: i64 = values.iter().map(|v| *v as i64).sum();
    Ok(sum as f64)
}

proptest! {
    #![proptest_config(config(1024))]

    /// `BatchTotals` over arbitrary pages never panics, answers every instance of the batch once
    /// and in order, and each answer equals the reference model (never a 0 for an instance
    /// CloudWatch did not answer or answered with an error).
    #[test]
    fn batch_totals_sum_pages_like_the_model((n, pages) in pages()) {
        let batch: Vec<String> = (0..n).map(|i| format!("i-{i:017x}")).collect();
        let mut totals = BatchTotals::new(n, 300);
        for page in &pages {
            let results: Vec<MetricDataResult> = page.iter().map(CwResult::build).collect();
            totals.add_page(&results);
        }
        let answers = totals.finish(&batch);
        prop_assert_eq!(answers.iter().map(|(id, _)| id).collect::<Vec<_>>(), batch.iter().collect::<Vec<_>>());
        for (i, (_, answer)) in answers.into_iter().enumerate() {
            let got = answer.map(|series| series.total()).map_err(|e| (e.code, e.kind));
            prop_assert_eq!(got, model_answer(i, &pages), "instance {}", i);
        }
    }
}
