//! Tier-2 tests of the EC2 adaptor's cluster listing (`Ec2::with_cluster_listing`,
//! `imds_operator::aws::describe`): with the cluster's tag (given, or learnt from instances read
//! by ID), a large refresh lists the instances tagged `kubernetes.io/cluster/<name>` (1,000 per
//! DescribeInstances page) and reads by ID only the instances asked for that the listing did not
//! show. Against the EC2 double (pages,
//! terminated instances, another cluster's instances, failures) and moto (the listing and the
//! reads by ID agree).

mod ec2_common;

use ec2_common::{FAST, HARDENED, LAUNCH_DEFAULTS, instance_id};
use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use imds_core::observation::{FailureKind, Observation};
use imds_operator::aws::ec2::Ec2;
use imds_operator::telemetry::metrics::Metrics;
use imds_test_support::Moto;
use imds_test_support::ec2_double::{DESCRIBE, Ec2Double};

const CLUSTER: &str = "prod";
const CLUSTER_TAG: &str = "kubernetes.io/cluster/prod";

fn listing_adaptor(client: aws_sdk_ec2::Client) -> Ec2 {
    Ec2::new(client, FAST, Arc::new(Metrics::new())).with_cluster_listing(CLUSTER)
}

/// Successful DescribeInstances calls counted in `metrics`.
fn describe_calls(metrics: &Metrics) -> u64 {
    let series = "imds_operator_aws_api_calls_total{operation=\"DescribeInstances\",outcome=\"ok\"} ";
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// What the describe answered per ID, for comparison.
type Answers = HashMap<String, (Observation, Vec<String>)>;

/// The DescribeInstances requests the double received: (listing by the cluster tag, by ID).
fn requests_by_kind(double: &Ec2Double) -> (usize, usize) {
    let log = double.requests_for(DESCRIBE);
    let listing = log
        .iter()
        .filter(|r| r.param("Filter.1.Name") == Some("tag-key"))
        .inspect(|r| {
            assert_eq!(r.param("Filter.1.Value.1"), Some(CLUSTER_TAG));
            assert_eq!(r.param("MaxResults"), Some("1000"));
        })
        .count();
    let by_id = log
        .iter()
        .filter(|r| r.param("Filter.1.Name") == Some("instance-id"))
        .count();
    assert_eq!(listing + by_id, log.len(), "every DescribeInstances lists or names IDs");
    (listing, by_id)
}

/// A cluster of 2,450 tagged instances (every tenth hardened), 50 more of its nodes whose
/// instances lack the tag, one tagged instance terminated, and 300 instances of another cluster;
/// a refresh of the 2,500 nodes, the terminated one and 2 unknown IDs: 3 listing pages (2,451
/// tagged instances) and one call by ID (the 52 the listing did not show) instead of 13 by ID.
#[tokio::test]
async fn a_large_refresh_lists_the_cluster_and_reads_the_rest_by_id() {
    let double = Ec2Double::start().await;
    let mut asked = Vec::new();
    for n in 1..=2450 {
        let options = if n % 10 == 0 { HARDENED } else { LAUNCH_DEFAULTS };
        double.add_instance(&instance_id(n), options, &[(CLUSTER_TAG, "owned"), ("Name", "node")]);
        asked.push(instance_id(n));
    }
    for n in 3001..=3050 {
        double.add_instance(&instance_id(n), LAUNCH_DEFAULTS, &[("Name", "untagged node")]);
        asked.push(instance_id(n));
    }
    let terminated = instance_id(2999);
    double.add_instance(&terminated, LAUNCH_DEFAULTS, &[(CLUSTER_TAG, "owned")]);
    double.terminate(&terminated);
    asked.push(terminated.clone());
    for n in 5001..=5300 {
        double.add_instance(&instance_id(n), HARDENED, &[("kubernetes.io/cluster/other", "owned")]);
    }
    let unknown = [instance_id(9001), instance_id(9002)];
    asked.extend(unknown.iter().cloned());

    let ec2 = listing_adaptor(double.sdk_client().await);
    let answers = ec2.describe(&asked).await;

    assert_eq!(
        answers.len(),
        asked.len(),
        "one answer per ID asked for, none for others"
    );
    for n in (1..=2450).chain(3001..=3050) {
        let id = instance_id(n);
        let expected = if n <= 2450 && n % 10 == 0 {
            HARDENED
        } else {
            LAUNCH_DEFAULTS
        };
        match &answers[&id].0 {
            Observation::Found(o) => assert_eq!(o.values, expected.to_options(), "{id}"),
            other => panic!("{id}: {other:?}"),
        }
    }
    for id in unknown.iter().chain([&terminated]) {
        assert_eq!(answers[id].0, Observation::NotFound, "{id}");
    }
    assert_eq!(requests_by_kind(&double), (3, 1), "(listing pages, calls by ID)");
}

/// A refresh one call by ID can read is read by ID; after a listing of 3 pages, by ID again
/// while that takes no more calls (600 IDs: 3), listed when it takes more (601: 4).
#[tokio::test]
async fn listing_is_used_only_where_it_takes_fewer_calls() {
    let double = Ec2Double::start().await;
    let ids: Vec<String> = (1..=2500).map(instance_id).collect();
    for id in &ids {
        double.add_instance(id, LAUNCH_DEFAULTS, &[(CLUSTER_TAG, "shared")]);
    }
    let ec2 = listing_adaptor(double.sdk_client().await);

    ec2.describe(&ids[..200]).await;
    assert_eq!(requests_by_kind(&double), (0, 1), "200 IDs: one call by ID");
    double.clear_requests();

    ec2.describe(&ids[..201]).await;
    assert_eq!(
        requests_by_kind(&double),
        (3, 0),
        "201 IDs, no listing yet: listed (3 pages)"
    );
    double.clear_requests();

    ec2.describe(&ids[..600]).await;
    assert_eq!(
        requests_by_kind(&double),
        (0, 3),
        "600 IDs: 3 by ID, not more than listing"
    );
    double.clear_requests();

    let answers = ec2.describe(&ids[..601]).await;
    assert_eq!(requests_by_kind(&double), (3, 0), "601 IDs: 4 by ID, listed in 3");
    assert_eq!(answers.len(), 601);
    assert!(answers.values().all(|(o, _)| matches!(o, Observation::Found(_))));
}

/// Without a cluster name, the tag is learnt when every instance a call by ID found carries the
/// same one: the first read of 2,450 instances takes 13 calls by ID, the next 3 listing pages.
#[tokio::test]
async fn the_cluster_tag_is_learnt_from_the_instances_read_by_id() {
    let double = Ec2Double::start().await;
    let ids: Vec<String> = (1..=2450).map(instance_id).collect();
    for id in &ids {
        double.add_instance(id, LAUNCH_DEFAULTS, &[(CLUSTER_TAG, "owned"), ("Name", "node")]);
    }
    let ec2 = Ec2::new(double.sdk_client().await, FAST, Arc::new(Metrics::new()));

    let first = ec2.describe(&ids).await;
    assert_eq!(requests_by_kind(&double), (0, 13), "no tag known yet: by ID");
    double.clear_requests();
    let second = ec2.describe(&ids).await;
    assert_eq!(requests_by_kind(&double), (3, 0), "the learnt tag: listed");
    assert_eq!(first, second);

    // 250 nodes of another cluster join: the listing does not show them, they are read by ID,
    // and what the listing left over does not replace the learnt tag.
    let mut with_others = ids.clone();
    for n in 5001..=5250 {
        double.add_instance(
            &instance_id(n),
            LAUNCH_DEFAULTS,
            &[("kubernetes.io/cluster/other", "owned")],
        );
        with_others.push(instance_id(n));
    }
    double.clear_requests();
    ec2.describe(&with_others).await;
    assert_eq!(requests_by_kind(&double), (3, 2), "listed, the rest by ID");
    double.clear_requests();
    ec2.describe(&with_others).await;
    assert_eq!(requests_by_kind(&double), (3, 2), "still listed by the learnt tag");
}

/// Reads whose instances do not all carry the same cluster tag (one without it in each call,
/// or another cluster's) teach nothing: the next read is by ID again.
#[tokio::test]
async fn mixed_reads_teach_no_cluster_tag() {
    let double = Ec2Double::start().await;
    let ids: Vec<String> = (1..=400).map(instance_id).collect();
    for (n, id) in (1..).zip(&ids) {
        let tags: &[(&str, &str)] = match n {
            1 => &[("Name", "untagged")],
            300 => &[("kubernetes.io/cluster/other", "owned")],
            _ => &[(CLUSTER_TAG, "owned")],
        };
        double.add_instance(id, LAUNCH_DEFAULTS, tags);
    }
    let ec2 = Ec2::new(double.sdk_client().await, FAST, Arc::new(Metrics::new()));
    ec2.describe(&ids).await;
    double.clear_requests();
    ec2.describe(&ids).await;
    assert_eq!(requests_by_kind(&double), (0, 2), "nothing learnt: by ID");
}

/// A listing that fails (throttled through the SDK's three attempts) fails every ID it was to
/// read, as a failed batch by ID does; it is not followed by 25 calls by ID into the same
/// throttling.
#[tokio::test]
async fn a_failed_listing_fails_the_ids_it_was_to_read() {
    let double = Ec2Double::start().await;
    let ids: Vec<String> = (1..=450).map(instance_id).collect();
    for id in &ids {
        double.add_instance(id, LAUNCH_DEFAULTS, &[(CLUSTER_TAG, "owned")]);
    }
    double.throttle(DESCRIBE, 3);
    let ec2 = listing_adaptor(double.sdk_client().await);

    let answers = ec2.describe(&ids).await;
    assert_eq!(answers.len(), 450);
    for id in &ids {
        match &answers[id].0 {
            Observation::Failed(f) => assert_eq!(f.kind, FailureKind::Transient, "{id}"),
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(
        requests_by_kind(&double),
        (3, 0),
        "three attempts of the first page, nothing else"
    );
}

/// Against moto: 450 tagged instances and 5 untagged ones read through the listing (one page,
/// then one call by ID for the 6 it did not show) give the same answers as reading them by ID
/// (3 calls).
#[tokio::test]
async fn moto_listing_and_reading_by_id_agree() -> Result<()> {
    let moto = Moto::start()?;
    let record_tag = imds_operator::aws::ec2::ORIGINAL_OPTIONS_TAG;
    let mut ids = moto
        .run_instances(450, &[(CLUSTER_TAG, "owned"), (record_tag, "{}")])
        .await?;
    ids.extend(moto.run_instances(5, &[("Name", "untagged")]).await?);
    ids.push(instance_id(1));

    let client = moto.ec2_client().await;
    let by_id_metrics = Arc::new(Metrics::new());
    let by_id: Answers = Ec2::new(client.clone(), FAST, by_id_metrics.clone())
        .describe(&ids)
        .await;
    let listed_metrics = Arc::new(Metrics::new());
    let listed: Answers = Ec2::new(client, FAST, listed_metrics.clone())
        .with_cluster_listing(CLUSTER)
        .describe(&ids)
        .await;
    assert_eq!(describe_calls(&by_id_metrics), 3);
    assert_eq!(describe_calls(&listed_metrics), 2, "one listing page, one call by ID");

    assert_eq!(listed.len(), ids.len());
    assert_eq!(listed, by_id, "the listing and the reads by ID agree");
    assert_eq!(listed[&instance_id(1)].0, Observation::NotFound);
    let found = listed
        .values()
        .filter(|(o, _)| matches!(o, Observation::Found(_)))
        .count();
    assert_eq!(found, 455);
    Ok(())
}
