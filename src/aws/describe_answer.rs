//! DescribeInstances answers read for what the operator keeps. The SDK's generated deserializer
//! builds every field of every instance (block devices, network interfaces, ...) and every tag;
//! `perf` over a quiet resync of 5,000 instances put ~47% of the operator's CPU there, ~22% in the
//! tag lists alone. [`LeanDescribeAnswers`] (an interceptor on the DescribeInstances call) puts
//! [`LeanDeserializer`] in the operation's configuration in place of the SDK's for a success
//! answer: its body is read with the SDK's own XML decoder (`aws_smithy_xml`: tokens, entities,
//! scopes) into the SDK's own output types, keeping the instance ID, state, metadata options,
//! launch time and the tags `kept_tag` names. Error answers stay with the SDK's deserializer
//! (retries and error classification are unchanged).

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::types::{
    HttpTokensState, Instance, InstanceMetadataEndpointState, InstanceMetadataOptionsResponse,
    InstanceMetadataOptionsState, InstanceMetadataProtocolState, InstanceMetadataTagsState, InstanceState,
    InstanceStateName, Reservation, Tag,
};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, Error, Output, OutputOrError,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_types::DateTime;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::Format;
use aws_smithy_xml::decode::{Document, ScopedDecoder, XmlDecodeError, try_data};

/// The instance tag in which versions before 0.2 recorded an instance's original options. It is
/// never read now (anyone with `ec2:CreateTags` could forge it); the record is kept in the cluster
/// (`controller::records`).
pub const ORIGINAL_OPTIONS_TAG: &str = "imds-operator.io:original-options";

/// The tag keys [`super::ec2::InstanceFacts::tag_keys`] always keeps.
pub const READ_TAG_KEYS: &[&str] = &[ORIGINAL_OPTIONS_TAG];

/// Whether an instance's tag is kept: the tags the operator reads ([`READ_TAG_KEYS`],
/// the launch source's), and the first key IMDS cannot serve (`first_unservable` is true until
/// one has been kept).
fn kept_tag(key: &str, first_unservable: bool) -> bool {
    READ_TAG_KEYS.contains(&key)
        || imds_core::launch_source::SOURCE_TAGS.contains(&key)
        || (first_unservable && !imds_core::plan::guards::servable_tag_key(key))
}

/// Puts [`LeanDeserializer`] in place of the SDK's deserializer for the success answers of one
/// DescribeInstances call (an error answer, seen before the first success, keeps the SDK's).
#[derive(Debug, Default)]
pub struct LeanDescribeAnswers;

impl Intercept for LeanDescribeAnswers {
    fn name(&self) -> &'static str {
        "LeanDescribeAnswers"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().status().is_success() {
            cfg.interceptor_state()
                .store_put(SharedResponseDeserializer::new(LeanDeserializer));
        }
        Ok(())
    }
}

/// Reads a success answer with [`parse`]. An error answer (only after a success answer that
/// could not be read and was retried) is read for its code and message.
#[derive(Debug)]
pub struct LeanDeserializer;

impl DeserializeResponse for LeanDeserializer {
    fn deserialize_nonstreaming(&self, response: &HttpResponse) -> OutputOrError {
        let body = response.body().bytes().unwrap_or_default();
        if !response.status().is_success() {
            let error = DescribeInstancesError::generic(error_metadata(body));
            return Err(OrchestratorError::operation(Error::erase(error)));
        }
        parse(body)
            .map(Output::erase)
            .map_err(|e| OrchestratorError::response(Box::new(e)))
    }
}

/// The code and message of an EC2 error answer
/// (`<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors>…</Response>`).
fn error_metadata(body: &[u8]) -> ErrorMetadata {
    let mut meta = ErrorMetadata::builder();
    let mut doc = match Document::try_from(body) {
        Ok(doc) => doc,
        Err(_) => return meta.message("unreadable EC2 error answer").build(),
    };
    let Ok(mut root) = doc.root_element() else {
        return meta.message("unreadable EC2 error answer").build();
    };
    while let Some(mut errors) = root.next_tag() {
        if !errors.start_el().matches("Errors") {
            continue;
        }
        while let Some(mut error) = errors.next_tag() {
            while let Some(mut field) = error.next_tag() {
                if field.start_el().matches("Code") {
                    if let Ok(code) = try_data(&mut field) {
                        meta = meta.code(code);
                    }
                } else if field.start_el().matches("Message")
                    && let Ok(message) = try_data(&mut field)
                {
                    meta = meta.message(message);
                }
            }
        }
    }
    meta.build()
}

/// A DescribeInstances success body, with only what the operator reads.
pub fn parse(body: &[u8]) -> Result<DescribeInstancesOutput, XmlDecodeError> {
    let mut doc = Document::try_from(body)?;
    let mut root = doc.root_element()?;
    if !root.start_el().matches("DescribeInstancesResponse") {
        return Err(XmlDecodeError::custom("not a DescribeInstancesResponse"));
    }
    let mut output = DescribeInstancesOutput::builder();
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches("nextToken") {
            output = output.next_token(try_data(&mut tag)?);
        } else if tag.start_el().matches("reservationSet") {
            let mut reservations = Vec::new();
            while let Some(mut item) = tag.next_tag() {
                reservations.push(reservation(&mut item)?);
            }
            output = output.set_reservations(Some(reservations));
        }
    }
    Ok(output.build())
}

fn reservation(decoder: &mut ScopedDecoder) -> Result<Reservation, XmlDecodeError> {
    let mut instances = Vec::new();
    while let Some(mut tag) = decoder.next_tag() {
        if tag.start_el().matches("instancesSet") {
            while let Some(mut item) = tag.next_tag() {
                instances.push(instance(&mut item)?);
            }
        }
    }
    Ok(Reservation::builder().set_instances(Some(instances)).build())
}

fn instance(decoder: &mut ScopedDecoder) -> Result<Instance, XmlDecodeError> {
    let mut instance = Instance::builder();
    while let Some(mut tag) = decoder.next_tag() {
        let el = tag.start_el();
        if el.matches("instanceId") {
            instance = instance.instance_id(try_data(&mut tag)?);
        } else if el.matches("instanceState") {
            instance = instance.state(instance_state(&mut tag)?);
        } else if el.matches("metadataOptions") {
            instance = instance.metadata_options(metadata_options(&mut tag)?);
        } else if el.matches("launchTime") {
            let text = try_data(&mut tag)?;
            let launched = DateTime::from_str(text.as_ref(), Format::DateTimeWithOffset)
                .map_err(|_| XmlDecodeError::custom("launchTime is not a timestamp"))?;
            instance = instance.launch_time(launched);
        } else if el.matches("tagSet") {
            instance = instance.set_tags(Some(tags(&mut tag)?));
        }
    }
    Ok(instance.build())
}

fn instance_state(decoder: &mut ScopedDecoder) -> Result<InstanceState, XmlDecodeError> {
    let mut state = InstanceState::builder();
    while let Some(mut tag) = decoder.next_tag() {
        if tag.start_el().matches("name") {
            state = state.name(InstanceStateName::from(try_data(&mut tag)?.as_ref()));
        }
    }
    Ok(state.build())
}

/// The metadata options EC2 answers with.
#[derive(Clone, Copy)]
enum OptionField {
    State,
    HttpTokens,
    HopLimit,
    HttpEndpoint,
    HttpProtocolIpv6,
    InstanceMetadataTags,
}

impl OptionField {
    fn named(local: &str) -> Option<OptionField> {
        Some(match local {
            "state" => OptionField::State,
            "httpTokens" => OptionField::HttpTokens,
            "httpPutResponseHopLimit" => OptionField::HopLimit,
            "httpEndpoint" => OptionField::HttpEndpoint,
            "httpProtocolIpv6" => OptionField::HttpProtocolIpv6,
            "instanceMetadataTags" => OptionField::InstanceMetadataTags,
            _ => return None,
        })
    }
}

fn metadata_options(decoder: &mut ScopedDecoder) -> Result<InstanceMetadataOptionsResponse, XmlDecodeError> {
    let mut options = InstanceMetadataOptionsResponse::builder();
    while let Some(mut tag) = decoder.next_tag() {
        let Some(field) = OptionField::named(tag.start_el().local()) else {
            continue;
        };
        let text = try_data(&mut tag)?;
        let text = text.as_ref();
        options = match field {
            OptionField::State => options.state(InstanceMetadataOptionsState::from(text)),
            OptionField::HttpTokens => options.http_tokens(HttpTokensState::from(text)),
            OptionField::HopLimit => options.http_put_response_hop_limit(
                text.parse()
                    .map_err(|_| XmlDecodeError::custom("httpPutResponseHopLimit is not an integer"))?,
            ),
            OptionField::HttpEndpoint => options.http_endpoint(InstanceMetadataEndpointState::from(text)),
            OptionField::HttpProtocolIpv6 => options.http_protocol_ipv6(InstanceMetadataProtocolState::from(text)),
            OptionField::InstanceMetadataTags => options.instance_metadata_tags(InstanceMetadataTagsState::from(text)),
        };
    }
    Ok(options.build())
}

/// The kept tags ([`kept_tag`]) of a `tagSet`, in EC2's order.
fn tags(decoder: &mut ScopedDecoder) -> Result<Vec<Tag>, XmlDecodeError> {
    let mut kept = Vec::new();
    let mut unservable_kept = false;
    while let Some(mut item) = decoder.next_tag() {
        let (mut key, mut value) = (None, None);
        while let Some(mut tag) = item.next_tag() {
            if tag.start_el().matches("key") {
                key = Some(try_data(&mut tag)?.into_owned());
            } else if tag.start_el().matches("value") {
                value = Some(try_data(&mut tag)?.into_owned());
            }
        }
        let Some(key) = key else {
            continue;
        };
        if kept_tag(&key, !unservable_kept) {
            unservable_kept |= !imds_core::plan::guards::servable_tag_key(&key);
            kept.push(Tag::builder().key(key).set_value(value).build());
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer shaped like EC2's (API reference, DescribeInstances, example 1), with the
    /// elements the operator does not read left in.
    const ANSWER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-496f-496e-8fe3-example</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1234567890abcdef0</reservationId>
      <groupSet/>
      <instancesSet>
        <item>
          <instanceId>i-1234567890abcdef0</instanceId>
          <imageId>ami-bff32ccc</imageId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <blockDeviceMapping><item><deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-1</volumeId></ebs></item></blockDeviceMapping>
          <launchTime>2026-11-30T08:15:00.000Z</launchTime>
          <tagSet>
            <item><key>Name</key><value>a &amp; b &lt;node&gt;</value></item>
            <item><key>kubernetes.io/cluster/demo</key><value>owned</value></item>
            <item><key>eks:nodegroup-name</key><value>workers</value></item>
            <item><key>team/owner</key><value>second unservable</value></item>
            <item><key>imds-operator.io:original-options</key><value>{}</value></item>
          </tagSet>
          <metadataOptions>
            <state>applied</state>
            <httpTokens>optional</httpTokens>
            <httpPutResponseHopLimit>2</httpPutResponseHopLimit>
            <httpEndpoint>enabled</httpEndpoint>
            <httpProtocolIpv6>disabled</httpProtocolIpv6>
            <instanceMetadataTags>disabled</instanceMetadataTags>
          </metadataOptions>
          <networkInterfaceSet><item><privateIpAddress>10.0.0.12</privateIpAddress></item></networkInterfaceSet>
        </item>
        <item>
          <instanceId>i-0fedcba0987654321</instanceId>
          <instanceState><code>0</code><name>pending</name></instanceState>
          <metadataOptions><state>pending</state><httpTokens>required</httpTokens></metadataOptions>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken>page-2</nextToken>
</DescribeInstancesResponse>"#;

    fn instances(output: &DescribeInstancesOutput) -> Vec<&Instance> {
        output.reservations().iter().flat_map(|r| r.instances()).collect()
    }

    #[test]
    fn an_answer_is_read_for_what_the_operator_keeps() {
        let output = parse(ANSWER.as_bytes()).expect("a well-formed answer");
        assert_eq!(output.next_token(), Some("page-2"));
        let found = instances(&output);
        assert_eq!(found.len(), 2);
        let first = found[0];
        assert_eq!(first.instance_id(), Some("i-1234567890abcdef0"));
        assert_eq!(first.state().and_then(|s| s.name()), Some(&InstanceStateName::Running));
        assert_eq!(
            first.launch_time().map(|t| t.secs()),
            Some(
                DateTime::from_str("2026-11-30T08:15:00Z", Format::DateTime)
                    .map(|t| t.secs())
                    .unwrap_or(0)
            )
        );
        let options = first.metadata_options().expect("options");
        assert_eq!(options.http_tokens(), Some(&HttpTokensState::Optional));
        assert_eq!(options.http_put_response_hop_limit(), Some(2));
        assert_eq!(options.http_endpoint(), Some(&InstanceMetadataEndpointState::Enabled));
        assert_eq!(
            options.http_protocol_ipv6(),
            Some(&InstanceMetadataProtocolState::Disabled)
        );
        assert_eq!(
            options.instance_metadata_tags(),
            Some(&InstanceMetadataTagsState::Disabled)
        );
        assert_eq!(options.state(), Some(&InstanceMetadataOptionsState::Applied));
        // Kept: the first key IMDS cannot serve, the launch source's, the record's; not the
        // others (a second unservable key included).
        let keys: Vec<&str> = first.tags().iter().filter_map(|t| t.key()).collect();
        assert_eq!(
            keys,
            [
                "kubernetes.io/cluster/demo",
                "eks:nodegroup-name",
                "imds-operator.io:original-options"
            ]
        );
        let second = found[1];
        assert_eq!(second.state().and_then(|s| s.name()), Some(&InstanceStateName::Pending));
        let pending = second.metadata_options().expect("options");
        assert_eq!(pending.state(), Some(&InstanceMetadataOptionsState::Pending));
        assert_eq!(pending.http_put_response_hop_limit(), None);
        assert!(second.tags().is_empty());
    }

    #[test]
    fn escaped_tag_values_are_unescaped() {
        let body = ANSWER.replace(
            "<key>eks:nodegroup-name</key><value>workers</value>",
            "<key>eks:nodegroup-name</key><value>a &amp; b</value>",
        );
        let output = parse(body.as_bytes()).expect("a well-formed answer");
        let tag = instances(&output)[0]
            .tags()
            .iter()
            .find(|t| t.key() == Some("eks:nodegroup-name"))
            .and_then(|t| t.value().map(String::from));
        assert_eq!(tag.as_deref(), Some("a & b"));
    }

    /// A truncated body is read as far as it goes, as the SDK's deserializer (the same decoder)
    /// reads it; HTTP's framing (Content-Length) is what catches a cut answer.
    #[test]
    fn what_is_not_an_answer_is_refused() {
        for (body, why) in [
            ("<Response><Errors/></Response>", "another root"),
            ("not xml", "not xml"),
            (
                "<DescribeInstancesResponse><reservationSet><item><instancesSet><item><launchTime>yesterday</launchTime></item></instancesSet></item></reservationSet></DescribeInstancesResponse>",
                "a bad timestamp",
            ),
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{why}: read as an answer");
        }
        let empty = parse(b"<DescribeInstancesResponse><reservationSet/></DescribeInstancesResponse>").expect("empty");
        assert!(instances(&empty).is_empty());
        assert_eq!(empty.next_token(), None);
    }

    #[test]
    fn an_error_answer_keeps_its_code_and_message() {
        let body = b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>r-1</RequestID></Response>";
        let meta = error_metadata(body);
        assert_eq!(meta.code(), Some("RequestLimitExceeded"));
        assert_eq!(meta.message(), Some("Request limit exceeded."));
        assert_eq!(error_metadata(b"<<").message(), Some("unreadable EC2 error answer"));
    }
}
