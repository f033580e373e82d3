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

fn facts(listed: &ListedInstance) -> &InstanceFacts {
    listed.facts.as_ref().expect("not gone")
}

#[test]
fn an_answer_is_read_for_what_the_operator_keeps() {
    let page = parse(ANSWER.as_bytes()).expect("a well-formed answer");
    assert_eq!(page.next_token.as_deref(), Some("page-2"));
    assert_eq!(page.instances.len(), 2);
    let first = &page.instances[0];
    assert_eq!(first.instance_id, "i-1234567890abcdef0");
    let f = facts(first);
    let launched = Timestamp::from_second(
        DateTime::from_str("2026-11-30T08:15:00Z", Format::DateTime)
            .map(|t| t.secs())
            .unwrap_or(0),
    )
    .ok();
    assert_eq!(f.launched, launched);
    let values = &f.options.values;
    assert_eq!(values.http_tokens, Some(HttpTokens::Optional));
    assert_eq!(values.http_put_response_hop_limit, Some(2));
    assert_eq!(values.http_endpoint, Some(Toggle::Enabled));
    assert_eq!(values.http_protocol_ipv6, Some(Toggle::Disabled));
    assert_eq!(values.instance_metadata_tags, Some(Toggle::Disabled));
    assert_eq!(f.options.state, ApplyState::Applied);
    // Kept: the first key IMDS cannot serve and the record's, not the others (a second
    // unservable key included); the node group's tag names the launch source.
    assert_eq!(
        f.tag_keys,
        ["kubernetes.io/cluster/demo", "imds-operator.io:original-options"]
    );
    let source = f.launch_source.as_ref().expect("a launch source");
    assert_eq!((source.kind, source.name.as_str()), ("NodeGroup", "workers"));
    assert_eq!(first.cluster_tag_key.as_deref(), Some("kubernetes.io/cluster/demo"));
    assert_eq!(page.instances[1].cluster_tag_key, None, "no cluster tag");
    let second = facts(&page.instances[1]);
    assert_eq!(second.options.state, ApplyState::Pending);
    assert_eq!(second.options.values.http_tokens, Some(HttpTokens::Required));
    assert_eq!(second.options.values.http_put_response_hop_limit, None);
    assert!(second.tag_keys.is_empty());
    assert_eq!(second.launch_source, None);
}

#[test]
fn gone_instances_and_odd_values() {
    let body = ANSWER
        .replace(
            "<code>16</code><name>running</name>",
            "<code>48</code><name>terminated</name>",
        )
        .replace(
            "<state>pending</state><httpTokens>required</httpTokens>",
            "<httpTokens>sometimes</httpTokens><httpPutResponseHopLimit>65</httpPutResponseHopLimit>",
        );
    let page = parse(body.as_bytes()).expect("a well-formed answer");
    assert_eq!(page.instances[0].facts, None, "terminated: gone");
    assert_eq!(
        page.instances[0].cluster_tag_key.as_deref(),
        Some("kubernetes.io/cluster/demo"),
        "a gone instance still names its cluster"
    );
    let odd = facts(&page.instances[1]);
    assert_eq!(odd.options.values.http_tokens, None, "an unknown spelling is unknown");
    assert_eq!(odd.options.values.http_put_response_hop_limit, None, "outside 1-64");
    assert_eq!(odd.options.state, ApplyState::Applied, "no state: applied");
}

#[test]
fn an_instance_of_two_clusters_names_none() {
    let body = ANSWER.replace(
        "<item><key>team/owner</key>",
        "<item><key>kubernetes.io/cluster/other</key><value>shared</value></item><item><key>team/owner</key>",
    );
    let page = parse(body.as_bytes()).expect("a well-formed answer");
    assert_eq!(page.instances[0].cluster_tag_key, None);
    assert_eq!(
        facts(&page.instances[0]).tag_keys,
        ["kubernetes.io/cluster/demo", "imds-operator.io:original-options"],
        "only the first unservable key is kept"
    );
}

#[test]
fn escaped_tag_values_are_unescaped() {
    let body = ANSWER.replace(
        "<key>eks:nodegroup-name</key><value>workers</value>",
        "<key>eks:nodegroup-name</key><value>a &amp; b</value>",
    );
    let page = parse(body.as_bytes()).expect("a well-formed answer");
    let source = facts(&page.instances[0])
        .launch_source
        .clone()
        .expect("a launch source");
    assert_eq!(source.name, "a & b");
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
    assert!(empty.instances.is_empty());
    assert_eq!(empty.next_token, None);
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

#[test]
fn what_unread_elements_hold_is_never_read() {
    // Inside an element the reader does not follow: an instance ID, a tag set, metadata options,
    // a comment naming the element's end tag, a nested element of the same name.
    let unread = "<networkInterfaceSet><item><instanceId>i-0bogus</instanceId>\
        <tagSet><item><key>imds-operator.io:original-options</key><value>x</value></item></tagSet>\
        <metadataOptions><httpTokens>required</httpTokens></metadataOptions>\
        <!-- </networkInterfaceSet> --><networkInterfaceSet a='>'><item/></networkInterfaceSet>\
        </item></networkInterfaceSet>";
    let body = ANSWER.replace(
        "<networkInterfaceSet><item><privateIpAddress>10.0.0.12</privateIpAddress></item></networkInterfaceSet>",
        unread,
    );
    assert_eq!(
        parse(body.as_bytes()).expect("a well-formed answer"),
        parse(ANSWER.as_bytes()).expect("a well-formed answer")
    );
}

#[test]
fn an_end_tag_must_close_the_open_element() {
    for (from, to) in [
        (
            "<launchTime>2026-11-30T08:15:00.000Z</launchTime>",
            "<launchTime>2026-11-30T08:15:00.000Z</key>",
        ),
        ("</tagSet>", "</tagset>"),
        ("<imageId>ami-bff32ccc</imageId>", "<imageId>ami-bff32ccc</imageID>"),
    ] {
        let body = ANSWER.replace(from, to);
        assert!(parse(body.as_bytes()).is_err(), "{to}: read as an answer");
    }
}

mod unread_subtrees {
    use super::*;
    use proptest::prelude::*;

    /// An element the reader does not follow, with nested elements (some of its own name,
    /// some named like elements the reader follows), attributes whose values hold `>` and `/>`,
    /// text, entities, comments and CDATA.
    fn unread_element() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("text".to_string()),
            Just("&amp;&lt;&#62;".to_string()),
            Just("<instanceId>i-0bogus</instanceId>".to_string()),
            Just("<tagSet><item><key>kubernetes.io/cluster/x</key><value/></item></tagSet>".to_string()),
            Just("<metadataOptions><state>pending</state></metadataOptions>".to_string()),
            Just("<!-- </blockDeviceMapping> -->".to_string()),
            Just("<![CDATA[</blockDeviceMapping>]]>".to_string()),
            Just("<blockDeviceMapping x='/>'/>".to_string()),
            Just("<ebs a=\">\" b='1'>v</ebs>".to_string()),
        ];
        let tree = leaf.prop_recursive(3, 24, 4, |inner| {
            (
                prop_oneof![Just("blockDeviceMapping"), Just("item"), Just("ebs")],
                prop::collection::vec(inner, 0..4),
            )
                .prop_map(|(name, children)| format!("<{name}>{}</{name} >", children.concat()))
        });
        tree.prop_map(|inside| format!("<blockDeviceMapping>{inside}</blockDeviceMapping>"))
    }

    proptest! {
        #[test]
        fn never_change_the_page(unread in prop::collection::vec(unread_element(), 1..4)) {
            let body = ANSWER.replace("<launchTime>", &format!("{}<launchTime>", unread.concat()));
            prop_assert_eq!(
                parse(body.as_bytes()).expect("a well-formed answer"),
                parse(ANSWER.as_bytes()).expect("a well-formed answer")
            );
        }
    }
}

#[test]
fn text_around_an_unread_element_is_kept_where_it_is_read() {
    let body = ANSWER.replace(
        "<key>eks:nodegroup-name</key><value>workers</value>",
        "<key>eks:nodegroup-name</key><value>work<unread>x</unread>  ers</value>",
    );
    let page = parse(body.as_bytes()).expect("a well-formed answer");
    let source = facts(&page.instances[0])
        .launch_source
        .clone()
        .expect("a launch source");
    assert_eq!(source.name, "work  ers");
}
