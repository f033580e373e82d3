//! The EC2 double's token buckets, latency and call counters, on loopback: raw requests (no SDK
//! retries to hide a throttled answer) and the SDK where the access key matters.

use std::time::{Duration, Instant};

use imds_core::options::FullOptions;
use imds_test_support::Ec2Double;
use imds_test_support::ec2_double::{ALL_ACTIONS, BUCKET_TAGGING, CREATE_TAGS, DELETE_TAGS, DESCRIBE, MODIFY};

const ID: &str = "i-0123456789abcdef0";

fn double_with_an_instance() -> Ec2Double {
    let double = Ec2Double::start_blocking();
    double.add_instance(ID, FullOptions::EC2_LAUNCH_DEFAULTS, &[]);
    double
}

/// One unsigned request; its HTTP status.
async fn call(http: &reqwest::Client, double: &Ec2Double, form: &str) -> u16 {
    let resp = http
        .post(double.endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .expect("the double answers");
    resp.status().as_u16()
}

fn modify_form() -> String {
    format!("Action={MODIFY}&Version=2016-11-15&InstanceId={ID}&HttpTokens=required")
}

fn describe_form() -> String {
    format!("Action={DESCRIBE}&Version=2016-11-15&InstanceId.1={ID}")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("http client")
}

#[tokio::test]
async fn an_empty_bucket_answers_request_limit_exceeded_until_it_refills() {
    let double = double_with_an_instance();
    double.set_bucket(MODIFY, 5, 2.0);
    let http = http();
    for _ in 0..5 {
        assert_eq!(call(&http, &double, &modify_form()).await, 200);
    }
    assert_eq!(call(&http, &double, &modify_form()).await, 503);
    // Other actions draw from their own buckets (none is set for DescribeInstances).
    for _ in 0..20 {
        assert_eq!(call(&http, &double, &describe_form()).await, 200);
    }
    let modify = double.counter(MODIFY);
    assert_eq!(
        (modify.calls, modify.throttled, modify.errors, modify.ok()),
        (6, 1, 0, 5)
    );
    assert_eq!(double.counter(DESCRIBE).throttled, 0);
    // 2 tokens per second: one is back within 600 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&http, &double, &modify_form()).await, 200);
    let tokens = double.bucket_tokens(MODIFY).expect("the bucket is set");
    assert!(tokens < 1.0, "{tokens}");
    // The throttled answer is EC2's.
    let throttled = double.requests_for(MODIFY).len();
    assert_eq!(throttled, 7);
    double.remove_bucket(MODIFY);
    for _ in 0..20 {
        assert_eq!(call(&http, &double, &modify_form()).await, 200);
    }
}

#[tokio::test]
async fn buckets_are_off_by_default_and_tag_writes_share_the_tagging_bucket() {
    let double = double_with_an_instance();
    let http = http();
    for _ in 0..200 {
        assert_eq!(call(&http, &double, &modify_form()).await, 200);
    }
    assert_eq!(double.counter(MODIFY).throttled, 0);

    double.set_bucket(BUCKET_TAGGING, 2, 0.0);
    let create = format!("Action={CREATE_TAGS}&Version=2016-11-15&ResourceId.1={ID}&Tag.1.Key=a&Tag.1.Value=b");
    let delete = format!("Action={DELETE_TAGS}&Version=2016-11-15&ResourceId.1={ID}&Tag.1.Key=a");
    assert_eq!(call(&http, &double, &create).await, 200);
    assert_eq!(call(&http, &double, &delete).await, 200);
    assert_eq!(call(&http, &double, &create).await, 503);
    assert_eq!(call(&http, &double, &delete).await, 503);
    // The Modify budget is untouched by tag writes.
    assert_eq!(call(&http, &double, &modify_form()).await, 200);
    double.reset_counters();
    assert!(double.counters().is_empty());
}

#[tokio::test]
async fn an_unfiltered_describe_draws_from_its_own_bucket() {
    let double = double_with_an_instance();
    double.set_account_buckets();
    double.set_bucket("DescribeInstances:unfiltered", 1, 0.0);
    let http = http();
    let unfiltered = format!("Action={DESCRIBE}&Version=2016-11-15");
    assert_eq!(call(&http, &double, &unfiltered).await, 200);
    assert_eq!(call(&http, &double, &unfiltered).await, 503);
    assert_eq!(call(&http, &double, &describe_form()).await, 200);
}

#[tokio::test]
async fn latency_delays_answers_without_serializing_them() {
    let double = double_with_an_instance();
    double.set_latency(ALL_ACTIONS, Duration::from_millis(300));
    double.set_latency(MODIFY, Duration::from_millis(50)..Duration::from_millis(100));
    let http = http();
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let http = http.clone();
            let endpoint = double.endpoint();
            tokio::spawn(async move {
                let at = Instant::now();
                let resp = http.post(endpoint).body(describe_form()).send().await.expect("answer");
                (resp.status().as_u16(), at.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (status, took) = call.await.expect("task");
        assert_eq!(status, 200);
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }
    // 20 answers of 300 ms each, at once: far less than 20 × 300 ms.
    let all = started.elapsed();
    assert!(all < Duration::from_secs(3), "{all:?}");

    let at = Instant::now();
    assert_eq!(call(&http, &double, &modify_form()).await, 200);
    let took = at.elapsed();
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The double stays usable while answers wait.
    assert_eq!(double.counter(DESCRIBE).calls, 20);
    double.clear_latency();
    let at = Instant::now();
    assert_eq!(call(&http, &double, &describe_form()).await, 200);
    assert!(at.elapsed() < Duration::from_millis(250), "{:?}", at.elapsed());
}

#[tokio::test]
async fn counters_are_kept_per_access_key() {
    let double = double_with_an_instance();
    double.set_bucket(MODIFY, 1, 0.0);
    let a = double.sdk_client_with_key("cluster-a").await;
    let b = double.sdk_client_with_key("cluster-b").await;
    a.describe_instances().instance_ids(ID).send().await.expect("describe");
    let modify = |client: aws_sdk_ec2::Client| async move {
        client
            .modify_instance_metadata_options()
            .instance_id(ID)
            .http_tokens(aws_sdk_ec2::types::HttpTokensState::Required)
            .send()
            .await
    };
    modify(a).await.expect("the bucket's only token");
    assert!(modify(b).await.is_err(), "the bucket is empty and does not refill");
    let by_key = double.counters_by_key();
    assert_eq!(by_key["cluster-a"][MODIFY].calls, 1);
    assert_eq!(by_key["cluster-a"][DESCRIBE].calls, 1);
    // The SDK's standard retry mode: 3 attempts, all throttled.
    assert_eq!(by_key["cluster-b"][MODIFY].calls, 3);
    assert_eq!(by_key["cluster-b"][MODIFY].throttled, 3);
    let found = double.find_request(|r| r.access_key == "cluster-b");
    assert_eq!(found.map(|r| r.action), Some(MODIFY.to_string()));
    assert_eq!(double.count_instances(|_, o| o.http_tokens.as_str() == "required"), 1);
}
