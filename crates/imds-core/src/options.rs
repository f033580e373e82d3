//! The metadata options as the operator reasons about them: what EC2 reports for an instance
//! (observed), and the complete set of five values sent in every modify request.

use crate::api::{HttpTokens, MetadataOptions, Toggle};
use std::fmt;

/// One of the five instance metadata options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `httpTokens`
    HttpTokens,
    /// `httpPutResponseHopLimit`
    HopLimit,
    /// `httpEndpoint`
    HttpEndpoint,
    /// `httpProtocolIPv6`
    HttpProtocolIpv6,
    /// `instanceMetadataTags`
    InstanceMetadataTags,
}

impl Field {
    /// All five, in a stable order.
    pub const ALL: [Field; 5] = [
        Field::HttpTokens,
        Field::HopLimit,
        Field::HttpEndpoint,
        Field::HttpProtocolIpv6,
        Field::InstanceMetadataTags,
    ];

    /// The name as in `spec.metadataOptions`.
    pub fn name(self) -> &'static str {
        match self {
            Field::HttpTokens => "httpTokens",
            Field::HopLimit => "httpPutResponseHopLimit",
            Field::HttpEndpoint => "httpEndpoint",
            Field::HttpProtocolIpv6 => "httpProtocolIPv6",
            Field::InstanceMetadataTags => "instanceMetadataTags",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The value of one option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptionValue {
    /// `httpTokens`
    Tokens(HttpTokens),
    /// `httpPutResponseHopLimit`
    HopLimit(i32),
    /// The three on/off options.
    Toggle(Toggle),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Tokens(t) => t.fmt(f),
            OptionValue::HopLimit(h) => h.fmt(f),
            OptionValue::Toggle(t) => t.fmt(f),
        }
    }
}

impl OptionValue {
    /// Parses the value of `field` as EC2 spells it (`required`, `2`, `enabled`…).
    pub fn parse(field: Field, text: &str) -> Option<OptionValue> {
        match field {
            Field::HttpTokens => HttpTokens::from_ec2(text).map(OptionValue::Tokens),
            Field::HopLimit => text
                .parse::<i32>()
                .ok()
                .filter(|h| HOP_LIMITS.contains(h))
                .map(OptionValue::HopLimit),
            Field::HttpEndpoint | Field::HttpProtocolIpv6 | Field::InstanceMetadataTags => {
                Toggle::from_ec2(text).map(OptionValue::Toggle)
            }
        }
    }
}

impl MetadataOptions {
    /// The value this spec sets for `field`, if any.
    pub fn get(&self, field: Field) -> Option<OptionValue> {
        match field {
            Field::HttpTokens => self.http_tokens.map(OptionValue::Tokens),
            Field::HopLimit => self.http_put_response_hop_limit.map(OptionValue::HopLimit),
            Field::HttpEndpoint => self.http_endpoint.map(OptionValue::Toggle),
            Field::HttpProtocolIpv6 => self.http_protocol_ipv6.map(OptionValue::Toggle),
            Field::InstanceMetadataTags => self.instance_metadata_tags.map(OptionValue::Toggle),
        }
    }

    /// Sets `field` to `value`; a value of the wrong kind for the field is ignored.
    pub fn set(&mut self, field: Field, value: OptionValue) {
        match (field, value) {
            (Field::HttpTokens, OptionValue::Tokens(t)) => self.http_tokens = Some(t),
            (Field::HopLimit, OptionValue::HopLimit(h)) => self.http_put_response_hop_limit = Some(h),
            (Field::HttpEndpoint, OptionValue::Toggle(t)) => self.http_endpoint = Some(t),
            (Field::HttpProtocolIpv6, OptionValue::Toggle(t)) => self.http_protocol_ipv6 = Some(t),
            (Field::InstanceMetadataTags, OptionValue::Toggle(t)) => self.instance_metadata_tags = Some(t),
            _ => {}
        }
    }
}

/// The hop limits EC2 documents (`HttpPutResponseHopLimit`, 1–64); anything else EC2 reports
/// is unknown, and a request never carries it.
pub const HOP_LIMITS: std::ops::RangeInclusive<i32> = 1..=64;

/// Whether the instance's last metadata change has taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApplyState {
    /// EC2 reports `applied`.
    #[default]
    Applied,
    /// EC2 reports `pending`: a change is in flight; never send another one meanwhile.
    Pending,
}

/// An instance's metadata options as DescribeInstances reports them. EC2 normally reports all
/// five; a field it leaves out is `None`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ObservedOptions {
    /// The five values.
    pub values: MetadataOptions,
    /// `pending` or `applied`.
    pub state: ApplyState,
}

/// The complete request of `ModifyInstanceMetadataOptions`: all five options, always.
///
/// AWS documents only the endpoint and the hop limit as kept when omitted, and older API
/// models default an omitted `HttpTokens` to `optional`, so a partial request could silently
/// re-enable IMDSv1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FullOptions {
    /// `HttpTokens`
    pub http_tokens: HttpTokens,
    /// `HttpPutResponseHopLimit`
    pub hop_limit: i32,
    /// `HttpEndpoint`
    pub http_endpoint: Toggle,
    /// `HttpProtocolIpv6`
    pub http_protocol_ipv6: Toggle,
    /// `InstanceMetadataTags`
    pub instance_metadata_tags: Toggle,
}

impl FullOptions {
    /// What an instance launched without metadata options has: tokens optional, hop limit 1,
    /// endpoint enabled, IPv6 and tags disabled.
    pub const EC2_LAUNCH_DEFAULTS: FullOptions = FullOptions {
        http_tokens: HttpTokens::Optional,
        hop_limit: 1,
        http_endpoint: Toggle::Enabled,
        http_protocol_ipv6: Toggle::Disabled,
        instance_metadata_tags: Toggle::Disabled,
    };

    /// `desired` merged over `observed`. An option neither sets falls back to
    /// [`FullOptions::EC2_LAUNCH_DEFAULTS`].
    pub fn merge(desired: &MetadataOptions, observed: &MetadataOptions) -> FullOptions {
        let d = Self::EC2_LAUNCH_DEFAULTS;
        FullOptions {
            http_tokens: desired.http_tokens.or(observed.http_tokens).unwrap_or(d.http_tokens),
            hop_limit: desired
                .http_put_response_hop_limit
                .or(observed.http_put_response_hop_limit)
                .unwrap_or(d.hop_limit),
            http_endpoint: desired
                .http_endpoint
                .or(observed.http_endpoint)
                .unwrap_or(d.http_endpoint),
            http_protocol_ipv6: desired
                .http_protocol_ipv6
                .or(observed.http_protocol_ipv6)
                .unwrap_or(d.http_protocol_ipv6),
            instance_metadata_tags: desired
                .instance_metadata_tags
                .or(observed.instance_metadata_tags)
                .unwrap_or(d.instance_metadata_tags),
        }
    }

    /// The observed options as a complete set: EC2's launch default where EC2 reported none.
    pub fn completed(observed: &MetadataOptions) -> FullOptions {
        FullOptions::merge(&MetadataOptions::default(), observed)
    }

    /// The value of `field`.
    pub fn get(&self, field: Field) -> OptionValue {
        match field {
            Field::HttpTokens => OptionValue::Tokens(self.http_tokens),
            Field::HopLimit => OptionValue::HopLimit(self.hop_limit),
            Field::HttpEndpoint => OptionValue::Toggle(self.http_endpoint),
            Field::HttpProtocolIpv6 => OptionValue::Toggle(self.http_protocol_ipv6),
            Field::InstanceMetadataTags => OptionValue::Toggle(self.instance_metadata_tags),
        }
    }

    /// The same options with `field` set to `value` (a value of the wrong kind is ignored).
    pub fn with(self, field: Field, value: OptionValue) -> FullOptions {
        let mut options = self.to_options();
        options.set(field, value);
        FullOptions::completed(&options)
    }

    /// The same values as a (complete) `MetadataOptions`.
    pub fn to_options(self) -> MetadataOptions {
        MetadataOptions {
            http_tokens: Some(self.http_tokens),
            http_put_response_hop_limit: Some(self.hop_limit),
            http_endpoint: Some(self.http_endpoint),
            http_protocol_ipv6: Some(self.http_protocol_ipv6),
            instance_metadata_tags: Some(self.instance_metadata_tags),
        }
    }
}

impl FullOptions {
    /// The compact form stored in an instance tag (at most 256 characters):
    /// `httpTokens=optional,httpPutResponseHopLimit=1,…`.
    pub fn to_tag_value(&self) -> String {
        format!(
            "httpTokens={},httpPutResponseHopLimit={},httpEndpoint={},httpProtocolIPv6={},instanceMetadataTags={}",
            self.http_tokens, self.hop_limit, self.http_endpoint, self.http_protocol_ipv6, self.instance_metadata_tags
        )
    }

    /// Parses [`FullOptions::to_tag_value`]; `None` when any of the five is missing or invalid.
    pub fn from_tag_value(value: &str) -> Option<FullOptions> {
        let mut options = MetadataOptions::default();
        for pair in value.split(',') {
            let (key, val) = pair.split_once('=')?;
            let toggle = || Toggle::from_ec2(val);
            match key.trim() {
                "httpTokens" => options.http_tokens = Some(HttpTokens::from_ec2(val)?),
                "httpPutResponseHopLimit" => {
                    let hop: i32 = val.parse().ok()?;
                    options.http_put_response_hop_limit = Some(hop).filter(|h| HOP_LIMITS.contains(h));
                }
                "httpEndpoint" => options.http_endpoint = toggle(),
                "httpProtocolIPv6" => options.http_protocol_ipv6 = toggle(),
                "instanceMetadataTags" => options.instance_metadata_tags = toggle(),
                _ => {}
            }
        }
        Some(FullOptions {
            http_tokens: options.http_tokens?,
            hop_limit: options.http_put_response_hop_limit?,
            http_endpoint: options.http_endpoint?,
            http_protocol_ipv6: options.http_protocol_ipv6?,
            instance_metadata_tags: options.instance_metadata_tags?,
        })
    }
}

impl fmt::Display for FullOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "httpTokens={} httpPutResponseHopLimit={} httpEndpoint={} httpProtocolIPv6={} instanceMetadataTags={}",
            self.http_tokens, self.hop_limit, self.http_endpoint, self.http_protocol_ipv6, self.instance_metadata_tags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_fills_every_field() {
        let desired = MetadataOptions {
            http_tokens: Some(HttpTokens::Required),
            ..Default::default()
        };
        let observed = MetadataOptions {
            http_put_response_hop_limit: Some(3),
            http_endpoint: Some(Toggle::Enabled),
            http_protocol_ipv6: Some(Toggle::Enabled),
            ..Default::default()
        };
        let full = FullOptions::merge(&desired, &observed);
        assert_eq!(
            full,
            FullOptions {
                http_tokens: HttpTokens::Required,
                hop_limit: 3,
                http_endpoint: Toggle::Enabled,
                http_protocol_ipv6: Toggle::Enabled,
                instance_metadata_tags: Toggle::Disabled,
            }
        );
        for field in Field::ALL {
            assert!(full.to_options().get(field).is_some(), "{field} missing");
        }
    }

    #[test]
    fn desired_wins_over_observed() {
        let desired = MetadataOptions {
            http_put_response_hop_limit: Some(2),
            ..Default::default()
        };
        let observed = MetadataOptions {
            http_tokens: Some(HttpTokens::Required),
            http_put_response_hop_limit: Some(1),
            ..Default::default()
        };
        let full = FullOptions::merge(&desired, &observed);
        assert_eq!(full.hop_limit, 2);
        assert_eq!(
            full.http_tokens,
            HttpTokens::Required,
            "observed tokens kept, never weakened"
        );
    }

    #[test]
    fn tag_value_round_trip() {
        let full = FullOptions::merge(
            &MetadataOptions {
                http_tokens: Some(HttpTokens::Required),
                http_put_response_hop_limit: Some(2),
                ..Default::default()
            },
            &MetadataOptions::default(),
        );
        let value = full.to_tag_value();
        assert!(value.len() <= 256);
        assert_eq!(FullOptions::from_tag_value(&value), Some(full));
        for bad in [
            "",
            "httpTokens=required",
            "httpTokens=maybe,httpPutResponseHopLimit=1,httpEndpoint=enabled,httpProtocolIPv6=disabled,instanceMetadataTags=disabled",
            "garbage",
        ] {
            assert_eq!(FullOptions::from_tag_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn get_and_set_round_trip() {
        let mut opts = MetadataOptions::default();
        opts.set(Field::HopLimit, OptionValue::HopLimit(2));
        opts.set(Field::HttpTokens, OptionValue::Toggle(Toggle::Enabled));
        assert_eq!(opts.get(Field::HopLimit), Some(OptionValue::HopLimit(2)));
        assert_eq!(opts.get(Field::HttpTokens), None, "wrong kind is ignored");
    }
}
