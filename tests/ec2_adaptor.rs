//! Tier-2 tests of the EC2 adaptor (`imds_operator::aws::ec2`) against real EC2 wire protocol
//! servers: moto (the EC2 emulator) where it models the behaviour, and the local EC2 double
//! (`imds_test_support::ec2_double`) where moto cannot: the `pending` apply state, DryRun on
//! modify, `UnauthorizedOperation`, `UnsupportedOperation`, the refusal of instance metadata tags
//! for tag keys IMDS cannot serve, and `RequestLimitExceeded` throttling (see
//! `docs/ec2-semantics.md`, "moto — known differences from EC2").
//!
//! Every test starts its own server. Run with `cargo test --test ec2_adaptor`; the moto tests
//! need `hack/setup-moto.sh` (run on demand by the harness, cached afterwards).

mod ec2_common;

use ec2_common::{FAST, HARDENED, LAUNCH_DEFAULTS, instance_id};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use imds_core::api::{HttpTokens, MetadataOptions, Toggle};
use imds_core::observation::{FailureKind, Observation};
use imds_core::options::{ApplyState, Field, FullOptions, ObservedOptions};
use imds_operator::aws::AwsErrorKind;
use imds_operator::aws::describe::DESCRIBE_BATCH;
use imds_operator::aws::ec2::Ec2;
use imds_operator::telemetry::metrics::Metrics;
use imds_test_support::Moto;
use imds_test_support::ec2_double::{DESCRIBE, Ec2Double, MODIFY, OPTION_PARAMS};

/// Every option away from the launch defaults.
const ALL_CHANGED: FullOptions = FullOptions {
    http_tokens: HttpTokens::Required,
    hop_limit: 3,
    http_endpoint: Toggle::Enabled,
    http_protocol_ipv6: Toggle::Enabled,
    instance_metadata_tags: Toggle::Enabled,
};

fn adaptor(client: aws_sdk_ec2::Client) -> (Ec2, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (Ec2::new(client, FAST, metrics.clone()), metrics)
}

/// `imds_operator_aws_api_calls_total{operation, outcome}` from the metrics text (0 if absent).
fn api_calls(metrics: &Metrics, operation: &str, outcome: &str) -> u64 {
    counter(
        metrics,
        &format!("imds_operator_aws_api_calls_total{{operation=\"{operation}\",outcome=\"{outcome}\"}}"),
    )
}

/// The value of one sample line of the metrics text, `name{labels}` exactly (0 if absent).
fn counter(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// The options an observation found (panics otherwise, with the observation).
fn found<'a>(observations: &'a HashMap<String, (Observation, Vec<String>)>, id: &str) -> &'a ObservedOptions {
    match observations.get(id) {
        Some((Observation::Found(options), _)) => options,
        other => panic!("{id}: expected Found, got {other:?}"),
    }
}

/// The AWS error code of a failed SDK call.
fn code<E: ProvideErrorMetadata, R>(err: SdkError<E, R>) -> String {
    err.code().unwrap_or_default().to_string()
}

fn failure_kind(observations: &HashMap<String, (Observation, Vec<String>)>, id: &str) -> Option<FailureKind> {
    match observations.get(id) {
        Some((Observation::Failed(failure), _)) => Some(failure.kind),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Against moto.
// ---------------------------------------------------------------------------------------------

/// 450 instances and 2 unknown IDs: every ID gets an observation, the unknown ones `NotFound`,
/// in ⌈452/200⌉ = 3 DescribeInstances calls (at most one more is tolerated).
#[tokio::test]
async fn moto_describe_450_instances_in_batches_of_200() -> Result<()> {
    let started = Instant::now();
    let moto = Moto::start()?;
    let up = started.elapsed();
    let record_tag = imds_operator::aws::ec2::ORIGINAL_OPTIONS_TAG;
    let mut ids = moto
        .run_instances(450, &[("team", "platform"), (record_tag, "{}")])
        .await?;
    let launched = started.elapsed();
    let unknown = ["i-00000000000000001".to_string(), "i-00000000000000002".to_string()];
    ids.extend(unknown.iter().cloned());

    let (ec2, metrics) = adaptor(moto.ec2_client().await);
    let before_describe = Instant::now();
    let observations = ec2.describe(&ids).await;
    let described = before_describe.elapsed();

    assert_eq!(observations.len(), 452, "one observation per requested ID");
    for id in &ids {
        if unknown.contains(id) {
            assert!(
                matches!(observations.get(id), Some((Observation::NotFound, _))),
                "{id}: {:?}",
                observations.get(id)
            );
            continue;
        }
        let observed = found(&observations, id);
        assert_eq!(observed.values.http_tokens, Some(HttpTokens::Optional), "{id}");
        assert_eq!(observed.values.http_put_response_hop_limit, Some(1), "{id}");
        assert_eq!(observed.values.http_endpoint, Some(Toggle::Enabled), "{id}");
        assert_eq!(observed.state, ApplyState::Applied, "{id}");
        assert_eq!(
            observations[id].1,
            vec![record_tag.to_string()],
            "{id}: only the tag keys the operator reads are kept"
        );
    }
    let calls = api_calls(&metrics, "DescribeInstances", "ok");
    let batches = ids.len().div_ceil(DESCRIBE_BATCH) as u64;
    assert!(
        calls >= batches && calls <= batches + 1,
        "{calls} DescribeInstances calls for {} IDs (batches: {batches})",
        ids.len()
    );
    eprintln!(
        "timings: moto up {up:?}, 450 instances launched at {launched:?}, describe of 452 IDs \
         {described:?} in {calls} calls, total {:?}",
        started.elapsed()
    );
    Ok(())
}

/// One modify sets all five options; a describe afterwards shows them.
#[tokio::test]
async fn moto_modify_sets_all_five_options() -> Result<()> {
    let moto = Moto::start()?;
    let ids = moto.run_instances(1, &[]).await?;
    let id = &ids[0];
    let (ec2, metrics) = adaptor(moto.ec2_client().await);

    let answer = ec2.modify(id, &ALL_CHANGED, false).await.context("modify")?;
    assert_eq!(answer.values, ALL_CHANGED.to_options(), "the answer echoes the request");

    let observations = ec2.describe(std::slice::from_ref(id)).await;
    let observed = found(&observations, id);
    assert_eq!(observed.values, ALL_CHANGED.to_options());
    assert_eq!(api_calls(&metrics, "ModifyInstanceMetadataOptions", "ok"), 1);
    assert_eq!(counter(&metrics, "imds_operator_instance_modifications_total"), 1);
    Ok(())
}

/// A modify of an instance that does not exist is `NotFound`; a terminated instance is
/// `NotFound` to describe, which is how the controller learns of it (moto accepts a modify of a
/// terminated instance; what EC2 answers then is not documented).
#[tokio::test]
async fn moto_missing_and_terminated_instances_are_not_found() -> Result<()> {
    let moto = Moto::start()?;
    let ids = moto.run_instances(2, &[]).await?;
    let client = moto.ec2_client().await;
    client
        .terminate_instances()
        .instance_ids(&ids[1])
        .send()
        .await
        .context("TerminateInstances")?;
    let (ec2, metrics) = adaptor(client);

    let err = ec2
        .modify("i-00000000000000001", &HARDENED, false)
        .await
        .expect_err("modify of a nonexistent instance");
    assert_eq!(err.kind, AwsErrorKind::NotFound, "{err}");
    assert_eq!(err.code, "InvalidInstanceID.NotFound");
    assert_eq!(
        api_calls(&metrics, "ModifyInstanceMetadataOptions", "InvalidInstanceID.NotFound"),
        1
    );

    // moto (5.2.5) accepts a modify of a terminated instance, so only describe can show it.
    let observations = ec2.describe(&ids).await;
    found(&observations, &ids[0]);
    assert!(
        matches!(observations.get(&ids[1]), Some((Observation::NotFound, _))),
        "terminated: {:?}",
        observations.get(&ids[1])
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Against the EC2 double.
// ---------------------------------------------------------------------------------------------

/// Starts a double with `n` instances `instance_id(1..=n)` at the launch defaults.
async fn double_with(n: u64) -> (Ec2Double, Ec2, Arc<Metrics>, Vec<String>) {
    let double = Ec2Double::start().await;
    let ids: Vec<String> = (1..=n).map(instance_id).collect();
    for id in &ids {
        double.add_instance(id, LAUNCH_DEFAULTS, &[("Name", "node")]);
    }
    let (ec2, metrics) = adaptor(double.sdk_client().await);
    (double, ec2, metrics, ids)
}

/// Every ModifyInstanceMetadataOptions request carries all five options (a partial request
/// could let EC2 fall back to a default, e.g. HttpTokens=optional).
#[tokio::test]
async fn modify_requests_carry_all_five_options() {
    let (double, ec2, _, ids) = double_with(2).await;
    let requests = [
        (&ids[0], HARDENED, false),
        (&ids[1], ALL_CHANGED, false),
        (&ids[0], LAUNCH_DEFAULTS, true),
    ];
    for (id, options, dry_run) in requests {
        let _ = ec2.modify(id, &options, dry_run).await;
    }
    let log = double.requests_for(MODIFY);
    assert_eq!(log.len(), requests.len(), "{log:#?}");
    for (recorded, (id, options, dry_run)) in log.iter().zip(requests) {
        for param in OPTION_PARAMS {
            assert!(recorded.param(param).is_some(), "{param} missing in {recorded:?}");
        }
        assert_eq!(recorded.param("InstanceId"), Some(id.as_str()));
        assert_eq!(recorded.param("HttpTokens"), Some(options.http_tokens.as_str()));
        assert_eq!(
            recorded.param("HttpPutResponseHopLimit"),
            Some(options.hop_limit.to_string().as_str())
        );
        assert_eq!(recorded.param("HttpEndpoint"), Some(options.http_endpoint.as_str()));
        assert_eq!(
            recorded.param("HttpProtocolIpv6"),
            Some(options.http_protocol_ipv6.as_str())
        );
        assert_eq!(
            recorded.param("InstanceMetadataTags"),
            Some(options.instance_metadata_tags.as_str())
        );
        assert_eq!(recorded.dry_run(), dry_run);
    }
    assert_eq!(double.options(&ids[0]), Some(HARDENED), "the dry run changed nothing");
    assert_eq!(double.options(&ids[1]), Some(ALL_CHANGED));
}

/// EC2 answers a modify with `pending`, and describes report `pending` (with the new values)
/// until the change is applied.
#[tokio::test]
async fn pending_state_is_reported_until_applied() {
    let (double, ec2, _, ids) = double_with(1).await;
    let id = &ids[0];
    double.pending_describes(2);

    let answer = ec2.modify(id, &HARDENED, false).await.expect("modify");
    assert_eq!(answer.state, ApplyState::Pending);
    assert_eq!(answer.values, HARDENED.to_options());

    for round in 1..=2 {
        let observations = ec2.describe(std::slice::from_ref(id)).await;
        let observed = found(&observations, id);
        assert_eq!(observed.state, ApplyState::Pending, "describe {round}");
        assert_eq!(observed.values, HARDENED.to_options(), "describe {round}");
    }
    let observations = ec2.describe(std::slice::from_ref(id)).await;
    assert_eq!(found(&observations, id).state, ApplyState::Applied);
    assert_eq!(double.is_pending(id), Some(false));
}

/// DryRun: `DryRunOk` when allowed (nothing changes), `PermissionDenied` when denied.
#[tokio::test]
async fn dry_run_is_ok_or_permission_denied() {
    let (double, ec2, metrics, ids) = double_with(1).await;
    let id = &ids[0];

    let err = ec2
        .modify(id, &HARDENED, true)
        .await
        .expect_err("a dry run always errs");
    assert_eq!(err.kind, AwsErrorKind::DryRunOk, "{err}");
    assert_eq!(err.code, "DryRunOperation");
    assert_eq!(double.options(id), Some(LAUNCH_DEFAULTS), "a dry run changes nothing");
    assert_eq!(counter(&metrics, "imds_operator_instance_modifications_total"), 0);

    double.deny(MODIFY);
    let err = ec2.modify(id, &HARDENED, true).await.expect_err("denied dry run");
    assert_eq!(err.kind, AwsErrorKind::PermissionDenied, "{err}");
    assert_eq!(err.code, "UnauthorizedOperation");
    assert_eq!(err.to_failure().kind, FailureKind::PermissionDenied);

    let err = ec2.modify(id, &HARDENED, false).await.expect_err("denied modify");
    assert_eq!(err.kind, AwsErrorKind::PermissionDenied, "{err}");
    assert_eq!(double.options(id), Some(LAUNCH_DEFAULTS));
    assert_eq!(double.requests_for(MODIFY).len(), 3, "neither answer is retried");
    assert_eq!(
        counter(
            &metrics,
            "imds_operator_aws_api_permission_errors_total{operation=\"ModifyInstanceMetadataOptions\"}"
        ),
        2
    );
}

/// `UnsupportedOperation` (IPv6 endpoint on a non-Nitro instance) is `Unsupported`.
#[tokio::test]
async fn unsupported_operation_is_unsupported() {
    let (double, ec2, _, ids) = double_with(1).await;
    let id = &ids[0];
    double.unsupported(id, Field::HttpProtocolIpv6);
    let with_ipv6 = FullOptions {
        http_protocol_ipv6: Toggle::Enabled,
        ..HARDENED
    };

    let err = ec2.modify(id, &with_ipv6, false).await.expect_err("IPv6 refused");
    assert_eq!(err.kind, AwsErrorKind::Unsupported, "{err}");
    assert_eq!(err.code, "UnsupportedOperation");
    assert_eq!(err.to_failure().kind, FailureKind::Unsupported);
    assert_eq!(
        double.options(id),
        Some(LAUNCH_DEFAULTS),
        "a refused request changes nothing"
    );

    ec2.modify(id, &HARDENED, false)
        .await
        .expect("without IPv6 it goes through");
    assert_eq!(double.options(id), Some(HARDENED));
}

/// EC2 refuses to enable instance metadata tags while a tag key contains `/` or a space
/// (`InvalidParameterValue`): `Unsupported`. Keys IMDS can serve are fine.
#[tokio::test]
async fn metadata_tags_with_unservable_tag_keys_are_unsupported() {
    let double = Ec2Double::start().await;
    let eks = instance_id(1);
    let spaced = instance_id(2);
    let plain = instance_id(3);
    double.add_instance(
        &eks,
        LAUNCH_DEFAULTS,
        &[("kubernetes.io/cluster/demo", "owned"), ("Name", "a")],
    );
    double.add_instance(&spaced, LAUNCH_DEFAULTS, &[("Patch Group", "web")]);
    double.add_instance(&plain, LAUNCH_DEFAULTS, &[("Name", "c"), ("team", "platform")]);
    let (ec2, _) = adaptor(double.sdk_client().await);
    let with_tags = FullOptions {
        instance_metadata_tags: Toggle::Enabled,
        ..HARDENED
    };

    for (id, key) in [(&eks, "kubernetes.io/cluster/demo"), (&spaced, "Patch Group")] {
        let err = ec2.modify(id, &with_tags, false).await.expect_err("tags refused");
        assert_eq!(err.kind, AwsErrorKind::Unsupported, "{err}");
        assert_eq!(err.code, "InvalidParameterValue");
        assert!(err.message.contains(key), "{err}");
        assert_eq!(double.options(id), Some(LAUNCH_DEFAULTS));
    }
    let answer = ec2.modify(&plain, &with_tags, false).await.expect("servable keys");
    assert_eq!(answer.values.instance_metadata_tags, Some(Toggle::Enabled));
    ec2.modify(&eks, &HARDENED, false)
        .await
        .expect("with tags off the EKS node is fine");
}

/// A throttled Modify is `Transient`, counted, and not retried by the SDK (one attempt: the
/// client rate is cut and the controller sends it again later, so a shared account's bucket does
/// not see the SDK's immediate retries); the next call goes through.
#[tokio::test]
async fn a_throttled_modify_is_transient_and_sent_once() {
    let (double, ec2, metrics, ids) = double_with(1).await;
    let id = &ids[0];

    double.throttle(MODIFY, 1);
    let err = ec2.modify(id, &HARDENED, false).await.expect_err("throttled");
    assert_eq!(err.kind, AwsErrorKind::Transient, "{err}");
    assert_eq!(err.code, "RequestLimitExceeded");
    assert!(err.is_throttling());
    assert_eq!(err.to_failure().kind, FailureKind::Transient);
    assert_eq!(double.requests_for(MODIFY).len(), 1, "no SDK retry of a write");
    assert_eq!(double.options(id), Some(LAUNCH_DEFAULTS));
    assert_eq!(
        api_calls(&metrics, "ModifyInstanceMetadataOptions", "RequestLimitExceeded"),
        1
    );
    let throttled = "imds_operator_aws_api_throttled_total{operation=\"ModifyInstanceMetadataOptions\"}";
    assert_eq!(counter(&metrics, throttled), 1);

    ec2.modify(id, &HARDENED, false).await.expect("the next call succeeds");
    assert_eq!(double.requests_for(MODIFY).len(), 2);
    assert_eq!(double.options(id), Some(HARDENED));
    assert_eq!(api_calls(&metrics, "ModifyInstanceMetadataOptions", "ok"), 1);
}

/// A failed DescribeInstances batch marks every ID of that batch `Failed(Transient)`; the other
/// batches are unaffected.
#[tokio::test]
async fn describe_batch_failure_marks_its_ids_transient() {
    let (double, ec2, metrics, mut ids) = double_with(450).await;
    double.throttle(DESCRIBE, 3);

    let observations = ec2.describe(&ids).await;
    assert_eq!(observations.len(), 450);
    ids.sort();
    let (first, rest) = ids.split_at(DESCRIBE_BATCH);
    for id in first {
        assert_eq!(failure_kind(&observations, id), Some(FailureKind::Transient), "{id}");
    }
    for id in rest {
        found(&observations, id);
    }
    assert_eq!(api_calls(&metrics, "DescribeInstances", "RequestLimitExceeded"), 1);
    assert_eq!(api_calls(&metrics, "DescribeInstances", "ok"), 2);
    // 3 attempts of the throttled batch, one call for each of the other two.
    assert_eq!(double.requests_for(DESCRIBE).len(), 5);
    for request in double.requests_for(DESCRIBE) {
        assert_eq!(request.param("Filter.1.Name"), Some("instance-id"));
        assert!(
            request
                .param(&format!("Filter.1.Value.{}", DESCRIBE_BATCH + 1))
                .is_none()
        );
    }
}

/// The adaptor follows `nextToken` within a batch when EC2 returns fewer instances per page
/// than asked (the double caps pages at 50): 4 + 4 + 1 pages for batches of 200, 200 and 52
/// IDs (50 of them found).
#[tokio::test]
async fn describe_follows_next_token_within_a_batch() {
    let (double, ec2, metrics, mut ids) = double_with(450).await;
    double.max_page_size(50);
    let unknown = [instance_id(1001), instance_id(1002)];
    ids.extend(unknown.iter().cloned());

    let observations = ec2.describe(&ids).await;
    assert_eq!(observations.len(), 452);
    for id in &ids {
        if unknown.contains(id) {
            assert!(matches!(observations[id], (Observation::NotFound, _)), "{id}");
        } else {
            assert_eq!(found(&observations, id).values, LAUNCH_DEFAULTS.to_options(), "{id}");
        }
    }
    assert_eq!(api_calls(&metrics, "DescribeInstances", "ok"), 9);
    let log = double.requests_for(DESCRIBE);
    assert_eq!(log.len(), 9);
    let follow_ups = log.iter().filter(|r| r.param("NextToken").is_some()).count();
    assert_eq!(follow_ups, 6, "3 + 3 follow-up pages in the two full batches");
}

/// A denied DescribeInstances marks every ID `Failed(PermissionDenied)`.
#[tokio::test]
async fn denied_describe_is_permission_denied() {
    let (double, ec2, metrics, ids) = double_with(3).await;
    double.deny(DESCRIBE);
    let observations = ec2.describe(&ids).await;
    for id in &ids {
        assert_eq!(
            failure_kind(&observations, id),
            Some(FailureKind::PermissionDenied),
            "{id}"
        );
    }
    assert_eq!(api_calls(&metrics, "DescribeInstances", "UnauthorizedOperation"), 1);
}

/// Answers that carry everything EC2 says of an instance (network interfaces with their own
/// groups and addresses, block devices, placement…) are read the same as the double's default
/// ones: what the operator does not read is skipped, whatever it holds.
#[tokio::test]
async fn describe_reads_detailed_answers() {
    let double = Ec2Double::start().await;
    let ids: Vec<String> = (1..=3).map(instance_id).collect();
    for (n, id) in ids.iter().enumerate() {
        let options = if n == 1 { LAUNCH_DEFAULTS } else { HARDENED };
        double.add_instance(
            id,
            options,
            &[("kubernetes.io/cluster/demo", "owned"), ("eks:nodegroup-name", "ng")],
        );
    }
    double.terminate(&ids[2]);
    let (ec2, _) = adaptor(double.sdk_client().await);
    let default = ec2.describe_instances(&ids).await;
    double.detailed_answers(true);
    let detailed = ec2.describe_instances(&ids).await;
    assert_eq!(detailed, default);
    assert!(
        matches!(detailed[&ids[0]].observation, Observation::Found(_)),
        "{detailed:?}"
    );
    assert_eq!(detailed[&ids[2]].observation, Observation::NotFound, "terminated");
}

/// Describe reports the tag keys the operator reads (escaped XML and all); missing and
/// terminated instances are `NotFound`; a modify of a missing instance is `NotFound`.
#[tokio::test]
async fn describe_reports_tags_and_not_found() {
    let double = Ec2Double::start().await;
    let tagged = instance_id(1);
    let terminated = instance_id(2);
    let missing = instance_id(3);
    double.add_instance(
        &tagged,
        HARDENED,
        &[("kubernetes.io/cluster/demo", "owned"), ("Name", "a & b <c>")],
    );
    double.add_instance(&terminated, HARDENED, &[]);
    double.terminate(&terminated);
    let (ec2, _) = adaptor(double.sdk_client().await);

    let ids = [tagged.clone(), terminated.clone(), missing.clone()];
    let observations = ec2.describe(&ids).await;
    let (observation, tag_keys) = &observations[&tagged];
    assert_eq!(
        observation,
        &Observation::Found(ObservedOptions {
            values: HARDENED.to_options(),
            state: ApplyState::Applied,
        })
    );
    assert_eq!(
        tag_keys,
        &vec!["kubernetes.io/cluster/demo".to_string()],
        "kept: the first key IMDS cannot serve (the tags guard names it); Name is not read"
    );
    for id in [&terminated, &missing] {
        assert!(
            matches!(observations[id], (Observation::NotFound, _)),
            "{id}: {:?}",
            observations[id]
        );
    }

    let err = ec2.modify(&missing, &HARDENED, false).await.expect_err("missing");
    assert_eq!(err.kind, AwsErrorKind::NotFound, "{err}");
    // What EC2 answers for a terminated instance is not documented; the double says
    // IncorrectInstanceState (see imds_test_support::ec2_double::Ec2Double::terminate).
    let err = ec2.modify(&terminated, &HARDENED, false).await.expect_err("terminated");
    assert_eq!(err.code, "IncorrectInstanceState", "{err}");
    let err = ec2.modify("i-bogus", &HARDENED, false).await.expect_err("malformed");
    assert_eq!(err.code, "InvalidInstanceID.Malformed");
    assert_eq!(err.kind, AwsErrorKind::NotFound, "{err}");
}

/// A response without options from a successful modify would be treated as pending; a
/// partial observation (an option EC2 left out) stays unknown. Checked here against the
/// double's complete answers: every option is reported.
#[tokio::test]
async fn observations_carry_every_option() {
    let (_double, ec2, _, ids) = double_with(1).await;
    let observations = ec2.describe(&ids).await;
    let observed = found(&observations, &ids[0]);
    let full = FullOptions::merge(&MetadataOptions::default(), &observed.values);
    assert_eq!(full, LAUNCH_DEFAULTS);
    for field in Field::ALL {
        assert!(observed.values.get(field).is_some(), "{field} not reported");
    }
}

// ---------------------------------------------------------------------------------------------
// The double itself.
// ---------------------------------------------------------------------------------------------

/// Pagination over instances, EC2's parameter rules, and the tag actions, through the SDK.
#[tokio::test]
async fn double_paginates_validates_and_tags() {
    let double = Ec2Double::start().await;
    for n in 1..=12 {
        double.add_instance(&instance_id(n), LAUNCH_DEFAULTS, &[]);
    }
    let client = double.sdk_client().await;

    // MaxResults counts instances; NextToken walks the pages.
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = client
            .describe_instances()
            .max_results(5)
            .set_next_token(token.take())
            .send()
            .await
            .expect("page");
        pages += 1;
        for reservation in page.reservations() {
            for instance in reservation.instances() {
                seen.push(instance.instance_id().unwrap_or_default().to_string());
            }
        }
        match page.next_token() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=12).map(instance_id).collect::<Vec<_>>());

    // EC2's rules: MaxResults not with InstanceIds; at most 200 values per filter; one unknown
    // ID in InstanceIds fails the call; a bad token is refused.

    let err = client
        .describe_instances()
        .instance_ids(instance_id(1))
        .max_results(5)
        .send()
        .await
        .expect_err("combination");
    assert_eq!(code(err), "InvalidParameterCombination");
    let filter = aws_sdk_ec2::types::Filter::builder()
        .name("instance-id")
        .set_values(Some((1..=201).map(instance_id).collect()))
        .build();
    let err = client
        .describe_instances()
        .filters(filter)
        .send()
        .await
        .expect_err("201 values");
    assert_eq!(code(err), "FilterLimitExceeded");
    let err = client
        .describe_instances()
        .instance_ids(instance_id(1))
        .instance_ids(instance_id(99))
        .send()
        .await
        .expect_err("unknown ID");
    assert_eq!(code(err), "InvalidInstanceID.NotFound");
    let err = client
        .describe_instances()
        .next_token("nonsense")
        .send()
        .await
        .expect_err("token");
    assert_eq!(code(err), "InvalidParameterValue");
    let err = client
        .modify_instance_metadata_options()
        .instance_id(instance_id(1))
        .http_put_response_hop_limit(65)
        .send()
        .await
        .expect_err("hop limit 65");
    assert_eq!(code(err), "InvalidParameterValue");

    // CreateTags and DeleteTags; keys with `/`, spaces and XML metacharacters round-trip.
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    client
        .create_tags()
        .resources(instance_id(1))
        .resources(instance_id(2))
        .tags(tag("kubernetes.io/cluster/demo", "owned"))
        .tags(tag("Patch Group", "a&b <c>"))
        .send()
        .await
        .expect("create tags");
    assert_eq!(
        double.tags(&instance_id(2)),
        Some(vec![
            ("kubernetes.io/cluster/demo".to_string(), "owned".to_string()),
            ("Patch Group".to_string(), "a&b <c>".to_string()),
        ])
    );
    client
        .delete_tags()
        .resources(instance_id(2))
        .tags(aws_sdk_ec2::types::Tag::builder().key("Patch Group").build())
        .send()
        .await
        .expect("delete tags");
    let described = client
        .describe_instances()
        .instance_ids(instance_id(2))
        .send()
        .await
        .expect("describe");
    let tags: Vec<(String, String)> = described.reservations()[0].instances()[0]
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        vec![("kubernetes.io/cluster/demo".to_string(), "owned".to_string())]
    );

    // With metadata tags on, a key IMDS cannot serve is refused.
    double.set_options(
        &instance_id(3),
        FullOptions {
            instance_metadata_tags: Toggle::Enabled,
            ..LAUNCH_DEFAULTS
        },
    );
    let err = client
        .create_tags()
        .resources(instance_id(3))
        .tags(tag("team/name", "x"))
        .send()
        .await
        .expect_err("key with /");
    assert_eq!(code(err), "InvalidParameterValue");
    assert_eq!(double.tags(&instance_id(3)), Some(vec![]));
}

/// Input the double cannot parse is a 400 `InvalidParameterValue`, never a crash; unknown
/// actions are `InvalidAction`. Every request is logged.
#[tokio::test]
async fn double_answers_malformed_requests_with_errors() {
    let double = Ec2Double::start().await;
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    let cases = [
        (
            "Action=DescribeInstances&InstanceId.1=%ZZ",
            400,
            "InvalidParameterValue",
        ),
        (
            "Action=DescribeInstances&InstanceId.1=%FF",
            400,
            "InvalidParameterValue",
        ),
        (
            "Action=DescribeInstances&InstanceId.2=i-00000001",
            400,
            "InvalidParameterValue",
        ),
        ("Action=DescribeInstances&MaxResults=lots", 400, "InvalidParameterValue"),
        (
            "Action=DescribeInstances&Filter.1.Name=vpc-id&Filter.1.Value.1=x",
            400,
            "InvalidParameterValue",
        ),
        (
            "Action=ModifyInstanceMetadataOptions&InstanceId=i-00000001&HttpTokens=bogus",
            400,
            "InvalidParameterValue",
        ),
        ("Action=ModifyInstanceMetadataOptions", 400, "MissingParameter"),
        ("Action=RunInstances", 400, "InvalidAction"),
        ("Version=2016-11-15", 400, "MissingParameter"),
    ];
    for (body, status, code) in cases {
        let response = http
            .post(double.endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{body}");
        let text = response.text().await.expect("body");
        assert!(text.contains(&format!("<Code>{code}</Code>")), "{body}: {text}");
        assert!(text.contains("<RequestID>"), "{body}: {text}");
    }
    assert_eq!(double.requests().len(), cases.len());
    double.clear_requests();
    assert!(double.requests().is_empty());
}

/// The lean reading of DescribeInstances answers (`aws::describe_answer`, one quick-xml pass,
/// what `Ec2::describe_instances` returns) and the SDK's full one agree, on moto's answers, on
/// everything the operator reads: the five options and their state, launch time, the kept tag
/// keys (the record's, the first key IMDS cannot serve), the launch source an (escaped) tag value
/// names; a terminated instance is not found.
#[tokio::test]
async fn moto_lean_and_sdk_readings_of_describe_agree() -> Result<()> {
    use imds_core::launch_source::launch_source;
    use imds_operator::aws::ec2::observed_from;
    let moto = Moto::start()?;
    let record_tag = imds_operator::aws::ec2::ORIGINAL_OPTIONS_TAG;
    let tags = [
        ("Name", "a & b <node>"),
        ("kubernetes.io/cluster/demo", "owned"),
        ("aws:ec2launchtemplate:id", "lt-0abc & \"q\""),
        ("team/owner", "not kept: a second unservable key"),
        (record_tag, "{\"httpTokens\":\"optional\"}"),
    ];
    let ids = moto.run_instances(3, &tags).await?;
    let client = moto.ec2_client().await;
    client
        .terminate_instances()
        .instance_ids(ids[2].clone())
        .send()
        .await
        .context("terminating one")?;
    let full = client
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await?;
    let (ec2, _) = adaptor(client);
    let lean = ec2.describe_instances(&ids).await;
    assert_eq!(lean.len(), 3);
    let sdk: Vec<_> = full.reservations().iter().flat_map(|r| r.instances()).collect();
    assert_eq!(sdk.len(), 3);
    for f in sdk {
        let id = f.instance_id().context("an ID")?;
        let l = &lean[id];
        let terminated = f.state().and_then(|s| s.name()) == Some(&aws_sdk_ec2::types::InstanceStateName::Terminated);
        if terminated {
            assert_eq!(l.observation, Observation::NotFound, "{id}");
            continue;
        }
        assert_eq!(
            l.observation,
            Observation::Found(observed_from(f.metadata_options())),
            "{id}"
        );
        let launched = f.launch_time().map(|t| t.secs());
        assert_eq!(l.launched.map(|t| t.as_second()), launched, "{id}");
        let keys: Vec<&str> = f.tags().iter().filter_map(|t| t.key()).collect();
        assert_eq!(keys.len(), tags.len(), "moto answers every tag");
        // Kept: the record's tag and the first key (in EC2's order) IMDS cannot serve,
        // whichever of the two slashed keys moto lists first.
        let first_unservable = keys.iter().find(|k| k.contains('/')).copied();
        let kept: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| *k == record_tag || Some(*k) == first_unservable)
            .collect();
        assert_eq!(l.tag_keys, kept, "{id}");
        let source = launch_source(|key| f.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()));
        assert_eq!(l.launch_source, source, "{id}");
        let name = source.map(|s| s.name).unwrap_or_default();
        assert!(name.starts_with("lt-0abc & \"q\""), "escaped values read back: {name}");
    }
    Ok(())
}
