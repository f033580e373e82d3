//! The EC2 double's fault injection and request attribution, through the AWS SDK on loopback:
//! the access key of every request, timed storms of 5xx errors, and the black hole.

use std::time::{Duration, Instant};

use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::HttpTokensState;
use imds_core::options::FullOptions;
use imds_test_support::Ec2Double;
use imds_test_support::ec2_double::{ACCESS_KEY_ID, DESCRIBE, InjectedError, MODIFY};

const ID: &str = "i-0123456789abcdef0";

fn double_with_an_instance() -> Ec2Double {
    let double = Ec2Double::start_blocking();
    double.add_instance(ID, FullOptions::EC2_LAUNCH_DEFAULTS, &[]);
    double
}

/// A raw, unsigned request with no timeout of its own: `Ok(status)` if answered.
async fn raw_call(endpoint: String, form: &'static str) -> Result<u16, reqwest::Error> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let resp = http
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

async fn raw_describe(endpoint: String) -> Result<u16, reqwest::Error> {
    raw_call(endpoint, "Action=DescribeInstances&Version=2016-11-15").await
}

async fn describe(client: &aws_sdk_ec2::Client) -> Result<(), String> {
    match client.describe_instances().instance_ids(ID).send().await {
        Ok(_) => Ok(()),
        Err(e) => Err(e.code().unwrap_or("no code").to_string()),
    }
}

async fn modify(client: &aws_sdk_ec2::Client) -> Result<(), String> {
    let sent = client
        .modify_instance_metadata_options()
        .instance_id(ID)
        .http_tokens(HttpTokensState::Required)
        .send()
        .await;
    sent.map(|_| ()).map_err(|e| e.code().unwrap_or("no code").to_string())
}

/// Sleeps until `deadline` (plus a margin), so that the next call falls after it.
async fn sleep_past(deadline: Instant) {
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(50)).await;
}

#[tokio::test]
async fn every_request_records_the_access_key_that_signed_it() {
    let double = double_with_an_instance();
    let replica_a = double.sdk_client_with_key("replica-a").await;
    let replica_b = double.sdk_client_with_key("replica-b").await;
    describe(&replica_a).await.expect("describe as replica-a");
    describe(&replica_b).await.expect("describe as replica-b");
    modify(&replica_b).await.expect("modify as replica-b");
    describe(&double.sdk_client().await)
        .await
        .expect("describe with the default key");
    assert_eq!(raw_describe(double.endpoint()).await.expect("an unsigned request"), 200);

    let by_key = double.requests_by_key();
    let summary: Vec<(&str, Vec<&str>)> = by_key
        .iter()
        .map(|(key, requests)| (key.as_str(), requests.iter().map(|r| r.action.as_str()).collect()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("", vec![DESCRIBE]),
            ("replica-a", vec![DESCRIBE]),
            ("replica-b", vec![DESCRIBE, MODIFY]),
            (ACCESS_KEY_ID, vec![DESCRIBE]),
        ]
    );
    let keys: Vec<String> = double.requests().into_iter().map(|r| r.access_key).collect();
    assert_eq!(keys, ["replica-a", "replica-b", "replica-b", ACCESS_KEY_ID, ""]);

    let env = double.aws_env_with_key("replica-c");
    let value = |env: &[(String, String)], name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(value(&env, "AWS_ACCESS_KEY_ID").as_deref(), Some("replica-c"));
    let mut expected = double.aws_env();
    expected.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID");
    let mut rest = env.clone();
    rest.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID");
    assert_eq!(rest, expected, "aws_env_with_key changed more than the key");
    assert_eq!(
        value(&double.aws_env(), "AWS_ACCESS_KEY_ID").as_deref(),
        Some(ACCESS_KEY_ID)
    );
}

#[tokio::test]
async fn a_storm_answers_every_matching_call_until_its_deadline() {
    let double = double_with_an_instance();
    let client = double.sdk_client().await;
    let window = Duration::from_millis(1500);

    // A storm on one action: Modify gets 500 InternalError on every attempt (the SDK retries
    // it as transient: 3 attempts), Describe is untouched.
    let deadline = Instant::now() + window;
    double.storm(&[MODIFY], InjectedError::internal_error(), window);
    assert_eq!(modify(&client).await, Err("InternalError".to_string()));
    assert_eq!(
        double.requests_for(MODIFY).len(),
        3,
        "the SDK's 3 attempts, all recorded"
    );
    describe(&client).await.expect("describe during a modify storm");
    assert!(Instant::now() < deadline, "the test was too slow for its storm window");
    sleep_past(deadline).await;
    modify(&client).await.expect("modify after the storm");
    assert_eq!(
        double.options(ID).map(|o| o.http_tokens),
        Some(imds_core::api::HttpTokens::Required)
    );

    // A storm on every action: 503 Unavailable; an error queued by `throttle` waits for it to
    // pass.
    double.clear_requests();
    double.throttle(DESCRIBE, 1);
    let deadline = Instant::now() + window;
    double.storm(&[], InjectedError::unavailable(), window);
    assert_eq!(describe(&client).await, Err("Unavailable".to_string()));
    assert_eq!(modify(&client).await, Err("Unavailable".to_string()));
    assert_eq!(double.requests().len(), 6);
    assert!(Instant::now() < deadline, "the test was too slow for its storm window");
    sleep_past(deadline).await;
    double.clear_requests();
    describe(&client)
        .await
        .expect("describe after the storm (one throttled attempt, retried)");
    assert_eq!(
        double.requests_for(DESCRIBE).len(),
        2,
        "the queued throttle was not kept"
    );

    // `calm` ends a storm early.
    double.storm(&[], InjectedError::internal_error(), Duration::from_secs(600));
    assert_eq!(describe(&client).await, Err("InternalError".to_string()));
    double.calm();
    describe(&client).await.expect("describe after calm");
}

/// An SDK client for `double` whose every attempt gives up after 300 ms.
async fn impatient_client(double: &Ec2Double) -> aws_sdk_ec2::Client {
    let config = double.sdk_client().await.config().to_builder();
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(300))
        .build();
    aws_sdk_ec2::Client::from_conf(config.timeout_config(timeouts).build())
}

#[tokio::test]
async fn a_black_hole_swallows_requests_until_it_ends() {
    let double = double_with_an_instance();
    let client = impatient_client(&double).await;
    let window = Duration::from_millis(2000);
    let started = Instant::now();
    let deadline = started + window;
    double.black_hole(window);

    // The SDK sees timeouts (of each attempt, which it retries): every attempt recorded, none
    // answered.
    let err = client
        .describe_instances()
        .instance_ids(ID)
        .send()
        .await
        .expect_err("an answer from a black hole");
    assert!(matches!(err, SdkError::TimeoutError(_)), "not a timeout: {err:?}");
    let swallowed = double.requests_for(DESCRIBE).len();
    eprintln!(
        "black hole: the SDK gave up after {swallowed} attempts, {:?}",
        started.elapsed()
    );
    assert_eq!(
        swallowed, 3,
        "the SDK retries a timed-out attempt: 3 attempts, all recorded"
    );
    assert!(
        Instant::now() < deadline,
        "the test was too slow for its black hole window"
    );

    // A client without a timeout: its request is recorded at once, the test's calls on the
    // double answer while it is held (no lock held by the waiting handler), and it ends after
    // the deadline with the connection closed and no response.
    let held = tokio::spawn(raw_describe(double.endpoint()));
    let seen = Instant::now();
    while double.requests_for(DESCRIBE).len() == swallowed {
        assert!(
            seen.elapsed() < Duration::from_secs(1),
            "the raw request was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    assert!(double.options(ID).is_some());
    assert!(
        asked.elapsed() < Duration::from_millis(100),
        "the double's state was locked"
    );

    // Another double is not affected.
    let other = double_with_an_instance();
    describe(&other.sdk_client().await)
        .await
        .expect("another double during the black hole");

    let answered = held.await.expect("the raw request's task");
    assert!(answered.is_err(), "the black hole answered: {answered:?}");
    assert!(
        Instant::now() >= deadline,
        "the connection closed before the black hole ended"
    );
    describe(&client).await.expect("describe after the black hole");

    // `calm` ends it early: a held request is let go (unanswered) within moments, and it was
    // not carried out.
    double.black_hole(Duration::from_secs(600));
    let modify_form = "Action=ModifyInstanceMetadataOptions&Version=2016-11-15&InstanceId=i-0123456789abcdef0\
                  &HttpTokens=required";
    let held = tokio::spawn(raw_call(double.endpoint(), modify_form));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calmed = Instant::now();
    double.calm();
    let answered = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("calm did not let the held request go")
        .expect("the raw request's task");
    assert!(answered.is_err(), "the black hole answered after calm: {answered:?}");
    assert!(calmed.elapsed() < Duration::from_secs(1));
    assert_eq!(double.requests_for(MODIFY).len(), 1, "the held modify was not recorded");
    assert_eq!(
        double.options(ID),
        Some(FullOptions::EC2_LAUNCH_DEFAULTS),
        "a swallowed modify was applied"
    );
    describe(&client).await.expect("describe after calm");
    // The same request, outside the black hole, is answered and applied.
    assert_eq!(
        raw_call(double.endpoint(), modify_form)
            .await
            .expect("the modify after calm"),
        200
    );
    assert_ne!(double.options(ID), Some(FullOptions::EC2_LAUNCH_DEFAULTS));

    // Dropping a double stops it at once, black hole or not; its held requests end unanswered.
    double.black_hole(Duration::from_secs(600));
    let held = tokio::spawn(raw_describe(double.endpoint()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = Instant::now();
    drop(double);
    assert!(
        dropped.elapsed() < Duration::from_secs(1),
        "drop waited for the black hole"
    );
    let answered = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held request outlived the double")
        .expect("the raw request's task");
    assert!(answered.is_err(), "a dropped double answered: {answered:?}");
}
