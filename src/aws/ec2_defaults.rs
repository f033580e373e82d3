//! The region's account-level IMDS defaults: `GetInstanceMetadataDefaults` (a read, paced by the
//! DescribeInstances limiter) and `ModifyInstanceMetadataDefaults` (a write: through the write
//! fence and a limiter of its own, below EC2's bucket of 2 per second).

use super::ec2::{Ec2, one_attempt};
use super::error::{AwsError, AwsErrorKind, Service, from_sdk};
use aws_sdk_ec2::types::{
    DefaultInstanceMetadataEndpointState, DefaultInstanceMetadataTagsState, InstanceMetadataDefaultsResponse,
    MetadataDefaultHttpTokensState,
};
use imds_core::api::{HttpTokens, Toggle};
use imds_core::defaults::{AccountDefaults, DefaultsRequest, ManagedBy};

/// Converts EC2's account-level answer. A hop limit outside 1–64 (EC2 reports `-1` for no
/// preference) and a value EC2 does not document are "no preference".
pub fn defaults_from(response: Option<&InstanceMetadataDefaultsResponse>) -> AccountDefaults {
    let Some(r) = response else {
        return AccountDefaults::default();
    };
    AccountDefaults {
        http_tokens: r.http_tokens().and_then(|t| HttpTokens::from_ec2(t.as_str())),
        hop_limit: r
            .http_put_response_hop_limit()
            .filter(|h| imds_core::options::HOP_LIMITS.contains(h)),
        http_endpoint: r.http_endpoint().and_then(|v| Toggle::from_ec2(v.as_str())),
        instance_metadata_tags: r.instance_metadata_tags().and_then(|v| Toggle::from_ec2(v.as_str())),
        managed_by: ManagedBy::from_ec2(r.managed_by().map(|m| m.as_str())),
        managed_exception_message: r
            .managed_exception_message()
            .filter(|m| !m.is_empty())
            .map(String::from),
    }
}

impl Ec2 {
    /// Reads the region's account-level defaults.
    pub async fn get_defaults(&self) -> Result<AccountDefaults, AwsError> {
        const OPERATION: &str = "GetInstanceMetadataDefaults";
        self.describe_limit.acquire().await;
        let result = self
            .client
            .get_instance_metadata_defaults()
            .send()
            .await
            .map_err(|e| from_sdk(Service::Ec2, OPERATION, e));
        self.record(OPERATION, &self.describe_limit, &result).await;
        Ok(defaults_from(result?.account_level()))
    }

    /// Sets the options `request` names (the others are not sent, so they keep their value).
    /// `dry_run` asks whether it would be allowed (`DryRunOk`).
    pub async fn modify_defaults(&self, request: &DefaultsRequest, dry_run: bool) -> Result<(), AwsError> {
        const OPERATION: &str = "ModifyInstanceMetadataDefaults";
        self.write_permit(&self.defaults_modify_limit, OPERATION).await?;
        let result = self
            .client
            .modify_instance_metadata_defaults()
            .set_http_tokens(
                request
                    .http_tokens
                    .map(|t| MetadataDefaultHttpTokensState::from(t.as_str())),
            )
            .set_http_put_response_hop_limit(request.hop_limit)
            .set_http_endpoint(
                request
                    .http_endpoint
                    .map(|v| DefaultInstanceMetadataEndpointState::from(v.as_str())),
            )
            .set_instance_metadata_tags(
                request
                    .instance_metadata_tags
                    .map(|v| DefaultInstanceMetadataTagsState::from(v.as_str())),
            )
            .dry_run(dry_run)
            .customize()
            .interceptor(self.fence.clone())
            .config_override(one_attempt())
            .send()
            .await
            .map_err(|e| from_sdk(Service::Ec2, OPERATION, e));
        self.record(OPERATION, &self.defaults_modify_limit, &result).await;
        match result?.r#return() {
            Some(false) => Err(AwsError::new(
                OPERATION,
                AwsErrorKind::Other,
                "ReturnFalse",
                "EC2 answered return=false: the defaults were not changed",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{HttpTokensState, InstanceMetadataTagsState};

    #[test]
    fn account_defaults_from_ec2() {
        let response = InstanceMetadataDefaultsResponse::builder()
            .http_tokens(HttpTokensState::Required)
            .http_put_response_hop_limit(-1)
            .instance_metadata_tags(InstanceMetadataTagsState::Disabled)
            .managed_by(aws_sdk_ec2::types::ManagedBy::DeclarativePolicy)
            .managed_exception_message("ask the platform team")
            .build();
        let got = defaults_from(Some(&response));
        assert_eq!(got.http_tokens, Some(HttpTokens::Required));
        assert_eq!(got.hop_limit, None, "-1 is no preference");
        assert_eq!(got.http_endpoint, None);
        assert_eq!(got.instance_metadata_tags, Some(Toggle::Disabled));
        assert_eq!(got.managed_by, ManagedBy::DeclarativePolicy);
        assert_eq!(got.managed_exception_message.as_deref(), Some("ask the platform team"));
        assert_eq!(defaults_from(None), AccountDefaults::default());
    }
}
