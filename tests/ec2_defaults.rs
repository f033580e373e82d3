//! Tier-2 tests of the account-defaults adaptor (`imds_operator::aws::ec2_defaults`) against the
//! local EC2 double (moto 5.2.5 serves neither GetInstanceMetadataDefaults nor
//! ModifyInstanceMetadataDefaults): the account-level answer with `managedBy`, only the named
//! options sent, `no-preference`, the write fence, DryRun, `UnauthorizedOperation`, and the
//! refusal of ModifyInstanceMetadataOptions / ModifyInstanceMetadataDefaults while a declarative
//! policy manages the account's IMDS settings, classified as `DeclarativePolicy` (see
//! `docs/ec2-semantics.md`, "Declarative policies").

use std::sync::Arc;

use anyhow::Result;
use imds_core::api::{HttpTokens, Toggle};
use imds_core::defaults::{self, AccountDefaults, DefaultsRequest, ManagedBy};
use imds_core::observation::FailureKind;
use imds_core::options::FullOptions;
use imds_operator::aws::AwsErrorKind;
use imds_operator::aws::ec2::{Ec2, RateLimits};
use imds_operator::aws::fence::WriteFence;
use imds_operator::telemetry::metrics::Metrics;
use imds_test_support::ec2_double::{Ec2Double, GET_DEFAULTS, MODIFY, MODIFY_DEFAULTS};

const FAST: RateLimits = RateLimits {
    describe_per_second: 1000.0,
    describe_burst: 1000,
    modify_per_second: 1000.0,
    modify_burst: 1000,
};

const ID: &str = "i-0000000000000000a";

async fn adaptor(double: &Ec2Double) -> Ec2 {
    Ec2::new(double.sdk_client().await, FAST, Arc::new(Metrics::new()))
}

fn managed(message: Option<&str>) -> AccountDefaults {
    AccountDefaults {
        http_tokens: Some(HttpTokens::Required),
        managed_by: ManagedBy::DeclarativePolicy,
        managed_exception_message: message.map(String::from),
        ..AccountDefaults::default()
    }
}

#[tokio::test]
async fn reads_the_account_level_defaults() -> Result<()> {
    let double = Ec2Double::start().await;
    let ec2 = adaptor(&double).await;
    assert_eq!(
        ec2.get_defaults().await?,
        AccountDefaults::default(),
        "nothing set: no preference"
    );
    let set = AccountDefaults {
        http_tokens: Some(HttpTokens::Optional),
        hop_limit: Some(2),
        http_endpoint: Some(Toggle::Enabled),
        instance_metadata_tags: Some(Toggle::Disabled),
        managed_by: ManagedBy::DeclarativePolicy,
        managed_exception_message: Some("Ask <platform> & co".into()),
    };
    double.set_account_defaults(set.clone());
    assert_eq!(ec2.get_defaults().await?, set, "every field, escaped text included");
    double.deny(GET_DEFAULTS);
    let err = ec2.get_defaults().await.expect_err("denied");
    assert_eq!(err.kind, AwsErrorKind::PermissionDenied);
    assert_eq!(err.code, "UnauthorizedOperation");
    Ok(())
}

#[tokio::test]
async fn modify_sends_only_the_named_options() -> Result<()> {
    let double = Ec2Double::start().await;
    double.set_account_defaults(AccountDefaults {
        http_endpoint: Some(Toggle::Disabled),
        ..AccountDefaults::default()
    });
    let ec2 = adaptor(&double).await;
    let request = DefaultsRequest {
        http_tokens: Some(HttpTokens::Required),
        hop_limit: Some(2),
        ..DefaultsRequest::default()
    };
    ec2.modify_defaults(&request, false).await?;
    let now = double.account_defaults();
    assert_eq!(now.http_tokens, Some(HttpTokens::Required));
    assert_eq!(now.hop_limit, Some(2));
    assert_eq!(now.http_endpoint, Some(Toggle::Disabled), "not sent, so kept");
    let sent = double.requests_for(MODIFY_DEFAULTS);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].param("HttpTokens"), Some("required"));
    assert_eq!(sent[0].param("HttpEndpoint"), None);
    assert_eq!(sent[0].param("InstanceMetadataTags"), None);

    let err = ec2.modify_defaults(&request, true).await.expect_err("DryRun");
    assert_eq!(err.kind, AwsErrorKind::DryRunOk);
    double.deny(MODIFY_DEFAULTS);
    let err = ec2.modify_defaults(&request, false).await.expect_err("denied");
    assert_eq!(err.kind, AwsErrorKind::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn modify_defaults_passes_the_write_fence() -> Result<()> {
    let double = Ec2Double::start().await;
    let ec2 = adaptor(&double).await.with_fence(WriteFence::closed());
    let request = DefaultsRequest {
        http_tokens: Some(HttpTokens::Required),
        ..DefaultsRequest::default()
    };
    let err = ec2.modify_defaults(&request, false).await.expect_err("fenced");
    assert_eq!(err.kind, AwsErrorKind::NotLeading);
    assert!(double.requests_for(MODIFY_DEFAULTS).is_empty(), "nothing sent");
    Ok(())
}

#[tokio::test]
async fn declarative_policy_refusals_are_classified() -> Result<()> {
    let double = Ec2Double::start().await;
    double.add_instance(ID, FullOptions::EC2_LAUNCH_DEFAULTS, &[]);
    let ec2 = adaptor(&double).await;
    let mut hardened = FullOptions::EC2_LAUNCH_DEFAULTS;
    hardened.http_tokens = HttpTokens::Required;

    // Managed by the account: a modify goes through.
    ec2.modify(ID, &hardened, false).await?;

    // Managed by a declarative policy, with and without its custom message, whichever code.
    for (code, message) in [
        (
            "UnsupportedOperation",
            Some("Changes go through cloud-platform@example.com"),
        ),
        ("OperationNotPermitted", None),
        (
            "UnauthorizedOperation",
            Some("Changes go through cloud-platform@example.com"),
        ),
    ] {
        double.set_account_defaults(managed(message));
        double.declarative_refusal(code, None);
        let read = ec2.get_defaults().await?;
        let err = ec2
            .modify(ID, &FullOptions::EC2_LAUNCH_DEFAULTS, false)
            .await
            .expect_err("refused");
        assert_eq!(err.code, code);
        if code != "OperationNotPermitted" {
            // An unknown code counts as "may have applied" until a describe shows (as before).
            assert!(!err.may_have_applied(), "{code}: a refusal was not applied");
        }
        let failure = defaults::classify_refusal(err.to_failure(), Some(&read));
        assert_eq!(
            failure.kind,
            FailureKind::DeclarativePolicy,
            "{code}: {}",
            failure.message
        );
        assert_eq!(failure.kind.reason().as_str(), "DeclarativePolicyEnforced");

        let err = ec2
            .modify_defaults(&DefaultsRequest::default(), false)
            .await
            .expect_err("the defaults are refused too");
        let failure = defaults::classify_refusal(err.to_failure(), Some(&read));
        assert_eq!(failure.kind, FailureKind::DeclarativePolicy, "{code}");
    }
    assert_eq!(
        double.options(ID).map(|o| o.http_tokens),
        Some(HttpTokens::Required),
        "unchanged"
    );

    // An IAM denial while managed stays a permission problem (its message is IAM's).
    double.set_account_defaults(managed(Some("Changes go through cloud-platform@example.com")));
    double.deny(MODIFY);
    let read = ec2.get_defaults().await?;
    let err = ec2
        .modify(ID, &FullOptions::EC2_LAUNCH_DEFAULTS, false)
        .await
        .expect_err("denied");
    let failure = defaults::classify_refusal(err.to_failure(), Some(&read));
    assert_eq!(failure.kind, FailureKind::PermissionDenied);
    Ok(())
}
