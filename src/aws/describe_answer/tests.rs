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

#[test]
fn what_is_not_an_answer_is_refused() {
    let cut = &ANSWER[..ANSWER.len() / 2];
    for (body, why) in [
        ("<Response><Errors/></Response>", "another root"),
        ("not xml", "not xml"),
        ("", "empty"),
        (cut, "cut short"),
        (
            "<DescribeInstancesResponse><reservationSet></item></DescribeInstancesResponse>",
            "mismatched end tag",
        ),
        (
            "<DescribeInstancesResponse><reservationSet><item><instancesSet><item><metadataOptions><httpPutResponseHopLimit>two</httpPutResponseHopLimit></metadataOptions></item></instancesSet></item></reservationSet></DescribeInstancesResponse>",
            "a hop limit that is not a number",
        ),
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
fn an_error_answer_keeps_its_code_message_and_request_id() {
    let body = b"<?xml version=\"1.0\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded &amp; more.</Message></Error></Errors><RequestID>r-1</RequestID></Response>";
    let meta = error_metadata(body);
    assert_eq!(meta.code(), Some("RequestLimitExceeded"));
    assert_eq!(meta.message(), Some("Request limit exceeded & more."));
    assert_eq!(meta.extra("aws_request_id"), Some("r-1"));
    assert_eq!(
        error_metadata(b"<a></b>").message(),
        Some("unreadable EC2 error answer")
    );
}
