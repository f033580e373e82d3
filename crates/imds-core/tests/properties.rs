//! Property tests of the core's parsers of input from outside the operator: Node
//! `spec.providerID`, a policy's `spec.nodeSelector`, option values and their compact request
//! form, and the stored per-instance records (the JSON kept in the records ConfigMaps).
//!
//! Each property states its reference model or invariant in its doc comment. Cases per property:
//! `PROPTEST_CASES` when set (long runs), else the small count given to [`config`], so that
//! `cargo test` stays fast. How to run long, and how to replay a failure: `docs/fuzzing.md`.

use imds_core::api::{HttpTokens, InstanceMetadataPolicy, InstanceMetadataPolicySpec, MetadataOptions, Toggle};
use imds_core::labels::{Interner, Labels};
use imds_core::options::{Field, FullOptions, OptionValue};
use imds_core::provider_id::{self, InstanceRef, SkipReason, is_instance_id};
use imds_core::record::{ChangeRecord, ChangeState, InstanceRecord, OptionRecord, field_named};
use imds_core::selection::PolicyInput;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{FailurePersistence, FileFailurePersistence};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// `cases` per property unless `PROPTEST_CASES` is set: `ProptestConfig::with_cases` would
/// override the variable, so it is read here. Failing seeds are appended to
/// `crates/imds-core/proptest-regressions/properties.txt` and replayed first on every run (unless
/// `PROPTEST_DISABLE_FAILURE_PERSISTENCE` is set).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let defaults = ProptestConfig::default();
    let failure_persistence = defaults.failure_persistence.as_ref().map(|_| {
        Box::new(FileFailurePersistence::Direct("proptest-regressions/properties.txt")) as Box<dyn FailurePersistence>
    });
    ProptestConfig {
        cases,
        failure_persistence,
        ..defaults
    }
}

// ---------------------------------------------------------------------------------------------
// providerID
// ---------------------------------------------------------------------------------------------

const HEX: &str = "0123456789abcdef";

/// `i-` and 8 or 17 lowercase hex digits.
fn instance_id() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-f]{8}", "[0-9a-f]{17}"].prop_map(|hex| format!("i-{hex}"))
}

/// Availability zones (`us-east-1a`, zone IDs `use1-az1`, Local Zones `us-west-2-lax-1a`) and
/// other names without `/`.
fn zone() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{2}(-[a-z]{2,9}){1,2}-[0-9][a-z]",
        "[a-z]{2,4}[0-9]-az[0-9]",
        "[a-z]{2}-[a-z]{4,9}-[0-9]-[a-z]{3}-[0-9][a-z]",
        "[^/\\s]{1,20}",
    ]
    .prop_filter("a Fargate segment is not a zone", |z| !z.starts_with("fargate-"))
}

/// Last segments that are not instance IDs: a wrong length, a character outside `0-9a-f`, or
/// another prefix.
fn bad_instance_id() -> impl Strategy<Value = String> {
    let lengths: Vec<usize> = (0..=30).filter(|n| *n != 8 && *n != 17).collect();
    let digit = prop::sample::select(HEX.chars().collect::<Vec<_>>());
    let wrong_length = prop::sample::select(lengths)
        .prop_flat_map(move |n| prop::collection::vec(digit.clone(), n))
        .prop_map(|h| format!("i-{}", h.into_iter().collect::<String>()));
    let bad_char = (
        prop_oneof![Just(8usize), Just(17usize)],
        any::<prop::sample::Index>(),
        "[^0-9a-f/\\s]",
    )
        .prop_map(|(len, at, c)| {
            let mut hex: Vec<String> = "0".repeat(len).chars().map(String::from).collect();
            hex[at.index(len)] = c;
            format!("i-{}", hex.concat())
        });
    let other_prefix = (
        prop::sample::select(vec!["", "I-", "ami-", "i_", "i", "-", "eni-", "i--"]),
        "[0-9a-f]{8}",
    )
        .prop_map(|(prefix, hex)| format!("{prefix}{hex}"));
    prop_oneof![wrong_length, bad_char, other_prefix]
}

/// Strings around the providerID grammar: arbitrary Unicode, long strings, and concatenations
/// of its pieces (schemes, slashes, zones, IDs, Fargate segments).
fn provider_id_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "aws:",
            "aws://",
            "aws:///",
            "/",
            "//",
            " ",
            "fargate-ip-10-0-1-2",
            "AWS://"
        ])
        .prop_map(String::from),
        zone(),
        instance_id(),
        bad_instance_id(),
        "\\PC{0,6}",
    ];
    prop_oneof![
        3 => any::<String>(),
        1 => "\\PC{1000,5000}",
        1 => ("aws:/{0,6}", "\\PC{0,5000}").prop_map(|(a, b)| a + &b),
        6 => prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
    ]
}

/// Invariants of any answer of `parse` (the reference is the grammar in its doc comment).
fn check_provider_id(raw: &str) -> Result<(), TestCaseError> {
    let trimmed = raw.trim();
    let result = provider_id::parse(Some(raw));
    prop_assert_eq!(matches!(result, Err(SkipReason::NoProviderId)), trimmed.is_empty());
    let not_aws = !trimmed.is_empty() && !trimmed.starts_with("aws://");
    prop_assert_eq!(matches!(result, Err(SkipReason::NotAws(_))), not_aws);
    match result {
        Ok(found) => {
            prop_assert!(is_instance_id(&found.instance_id));
            prop_assert!(trimmed.trim_end_matches('/').ends_with(&found.instance_id));
            prop_assert!(!found.zone.contains('/'));
            prop_assert_eq!(found.to_string(), found.instance_id.clone());
            // Round trip: the canonical spelling of what was found parses to the same.
            let canonical = match found.zone.as_str() {
                "" => format!("aws:///{}", found.instance_id),
                zone => format!("aws:///{zone}/{}", found.instance_id),
            };
            prop_assert_eq!(provider_id::parse(Some(&canonical)), Ok(found));
        }
        Err(SkipReason::NotAws(id) | SkipReason::Malformed { id, .. }) => prop_assert_eq!(id, trimmed),
        Err(SkipReason::Fargate(id)) => {
            prop_assert!(id.contains("/fargate-"));
            prop_assert_eq!(id, trimmed);
        }
        Err(SkipReason::NoProviderId) => {}
        Err(SkipReason::InstanceNotFound(_)) => prop_assert!(false, "parse never looks instances up"),
    }
    Ok(())
}

/// Reference for `is_instance_id`: `i-`, then exactly 8 or 17 characters, each one of `0-9a-f`.
fn model_is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|hex| {
        let n = hex.chars().count();
        (n == 8 || n == 17) && hex.chars().all(|c| HEX.contains(c))
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// `parse` never panics, and whatever it answers is consistent: blank is NoProviderID, no
    /// `aws://` is NotAWS, an instance found is a valid ID that ends the input and whose
    /// canonical `aws:///<zone>/<id>` parses back to it; every skip carries the trimmed input.
    #[test]
    fn provider_id_parse_never_panics(raw in provider_id_text()) {
        check_provider_id(&raw)?;
    }

    /// Every well-formed providerID is accepted with its zone and instance ID: `aws:///<az>/<id>`,
    /// the two-slash form, the zone-less form, whitespace around it ignored.
    #[test]
    fn well_formed_provider_ids_are_accepted(
        zone in zone(),
        id in instance_id(),
        with_zone: bool,
        slashes in 2..=3usize,
        pad in ("[ \t\n]{0,2}", "[ \t\n]{0,2}"),
    ) {
        let zone = if with_zone { zone } else { String::new() };
        let path = if with_zone { format!("{zone}/{id}") } else { id.clone() };
        let raw = format!("{}aws:{}{path}{}", pad.0, "/".repeat(slashes), pad.1);
        prop_assert_eq!(provider_id::parse(Some(&raw)), Ok(InstanceRef { zone, instance_id: id }));
    }

    /// A last segment that is not `i-` + 8 or 17 lowercase hex digits, or more than two path
    /// segments, is Malformed (never accepted, never NotAWS).
    #[test]
    fn malformed_provider_ids_are_rejected(
        zone in zone(),
        bad in bad_instance_id(),
        good in instance_id(),
        extra: bool,
    ) {
        let raw = if extra { format!("aws:///{zone}/{bad}/{good}") } else { format!("aws:///{zone}/{bad}") };
        let is_malformed = matches!(provider_id::parse(Some(&raw)), Err(SkipReason::Malformed { .. }));
        prop_assert!(is_malformed, "{raw:?}: {:?}", provider_id::parse(Some(&raw)));
    }

    /// `is_instance_id` agrees with the reference model on IDs, near misses and anything else.
    #[test]
    fn instance_id_shape_matches_the_model(
        s in prop_oneof![
            "i-[0-9a-fA-Fg-z\\-]{0,20}",
            "i-[0-9a-f]{7,18}",
            instance_id(),
            bad_instance_id(),
            any::<String>(),
        ],
    ) {
        prop_assert_eq!(is_instance_id(&s), model_is_instance_id(&s), "{:?}", s);
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

/// Keys and values from small pools (so that selectors and labels meet) and arbitrary ones.
fn label_key() -> impl Strategy<Value = String> {
    let pool = vec![
        "a",
        "b",
        "karpenter.sh/nodepool",
        "eks.amazonaws.com/nodegroup",
        "ключ",
        "",
    ];
    prop_oneof![4 => prop::sample::select(pool).prop_map(String::from), 1 => "\\PC{0,12}"]
}

fn label_value() -> impl Strategy<Value = String> {
    let pool = vec!["", "x", "y", "general", "gpu", "値"];
    prop_oneof![4 => prop::sample::select(pool).prop_map(String::from), 1 => "\\PC{0,12}"]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(label_key(), label_value(), 0..6)
}

/// Requirements: the four operators with and without values, misspelled and unknown operators.
fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    let operator = prop_oneof![
        6 => prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]).prop_map(String::from),
        1 => prop::sample::select(vec!["in", "Equals", "NotEquals", "Gt", "", "Exists "]).prop_map(String::from),
        1 => "\\PC{0,10}",
    ];
    let values = prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => prop::collection::vec(label_value(), 1..4).prop_map(Some),
    ];
    (label_key(), operator, values).prop_map(|(key, operator, values)| LabelSelectorRequirement {
        key,
        operator,
        values,
    })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        prop::option::of(prop::collection::btree_map(label_key(), label_value(), 0..3)),
        prop::option::of(prop::collection::vec(requirement(), 0..4)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// Reference: the API server's rules for `spec.nodeSelector` (the CRD's CEL rules in `api.rs`,
/// and Kubernetes' own `LabelSelectorAsSelector`): only In/NotIn/Exists/DoesNotExist; In and
/// NotIn need at least one value, Exists and DoesNotExist take none.
fn model_valid(selector: &LabelSelector) -> bool {
    selector.match_expressions.iter().flatten().all(|r| {
        let has_values = r.values.as_ref().is_some_and(|v| !v.is_empty());
        match r.operator.as_str() {
            "In" | "NotIn" => has_values,
            "Exists" | "DoesNotExist" => !has_values,
            _ => false,
        }
    })
}

/// Reference: Kubernetes label-selector semantics, for a valid selector. Every matchLabels pair
/// is present; In: the key is present with one of the values; NotIn: absent, or another value;
/// Exists: present; DoesNotExist: absent.
fn model_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let equal = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|r| {
        let values: Vec<&String> = r.values.iter().flatten().collect();
        let got = labels.get(&r.key);
        match r.operator.as_str() {
            "In" => got.is_some_and(|v| values.contains(&v)),
            "NotIn" => got.is_none_or(|v| !values.contains(&v)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            other => panic!("model_matches of an invalid operator {other:?}"),
        }
    });
    equal && expressions
}

fn policy_with(node_selector: LabelSelector) -> InstanceMetadataPolicy {
    InstanceMetadataPolicy::new(
        "p",
        InstanceMetadataPolicySpec {
            node_selector,
            metadata_options: MetadataOptions {
                http_tokens: Some(HttpTokens::Required),
                ..Default::default()
            },
            mode: Default::default(),
            priority: 0,
            guards: Default::default(),
            rollout: Default::default(),
            on_delete: Default::default(),
        },
    )
}

fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let policy = PolicyInput::from_policy(&policy_with(selector.clone())).expect("a valid selector");
    policy.selects(labels)
}

proptest! {
    #![proptest_config(config(512))]

    /// Parsing and matching never panic. A selector valid by the API server's rules is accepted
    /// and selects exactly the nodes the Kubernetes reference model selects; an unknown operator,
    /// or In/NotIn without `values`, is an error (`InvalidSelector` naming the policy). The labels
    /// as the Node store keeps them (interned [`Labels`]) are selected exactly as the map is.
    #[test]
    fn selectors_match_the_reference_model(selector in selector(), labels in labels()) {
        let valid = model_valid(&selector);
        match PolicyInput::from_policy(&policy_with(selector.clone())) {
            Ok(policy) => {
                let selected = policy.selects(&labels);
                let kept = Interner::default().labels(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                prop_assert_eq!(policy.selects(&kept), selected);
                prop_assert_eq!(policy.selects(&Labels::from(&labels)), selected);
                prop_assert_eq!(kept.to_map(), labels.clone());
                if valid {
                    prop_assert_eq!(selected, model_matches(&selector, &labels));
                }
            }
            Err(e) => {
                prop_assert!(!valid, "a valid selector was refused: {e}");
                prop_assert_eq!(e.name, "p");
            }
        }
        let refused_for_sure = selector.match_expressions.iter().flatten().any(|r| match r.operator.as_str() {
            "In" | "NotIn" => r.values.is_none(),
            "Exists" | "DoesNotExist" => false,
            _ => true,
        });
        if refused_for_sure {
            prop_assert!(PolicyInput::from_policy(&policy_with(selector)).is_err());
        }
    }

    /// Finding (see docs/fuzzing.md): selectors the API server refuses — In/NotIn with
    /// `values: []`, Exists/DoesNotExist with values — are accepted by `from_policy` (In [] then
    /// selects nothing, NotIn [] everything, Exists ignores its values). They cannot reach the
    /// controller through the API server, but `imds-operator report --policy FILE` evaluates them.
    /// Property: every selector invalid by the API server's rules is an error.
    #[test]
    fn selectors_the_api_server_refuses_are_errors(selector in selector()) {
        if !model_valid(&selector) {
            prop_assert!(PolicyInput::from_policy(&policy_with(selector.clone())).is_err(), "{:?}", selector);
        }
    }

    /// matchLabels: a node whose labels are a superset of the selector's pairs is selected; the
    /// same node with one of those values changed, or the key removed, is not.
    #[test]
    fn match_labels_select_supersets(
        required in prop::collection::btree_map(label_key(), label_value(), 1..4),
        extra in labels(),
        which in any::<prop::sample::Index>(),
        remove: bool,
    ) {
        let selector = LabelSelector { match_labels: Some(required.clone()), match_expressions: None };
        let mut node = extra;
        node.extend(required.clone());
        prop_assert!(selects(&selector, &node));
        let (key, value) = required.iter().nth(which.index(required.len())).expect("non-empty");
        if remove {
            node.remove(key);
        } else {
            node.insert(key.clone(), format!("{value}-other"));
        }
        prop_assert!(!selects(&selector, &node));
    }

    /// `{}`, empty matchLabels and empty matchExpressions select every node.
    #[test]
    fn empty_selectors_select_every_node(labels in labels(), some_labels: bool, some_exprs: bool) {
        let selector = LabelSelector {
            match_labels: some_labels.then(BTreeMap::new),
            match_expressions: some_exprs.then(Vec::new),
        };
        prop_assert!(selects(&selector, &labels));
    }

    /// Policies as JSON from outside (the API server, a `report --policy` file): deserializing
    /// arbitrary selector-shaped JSON and reducing the policy never panic.
    #[test]
    fn policy_json_never_panics(node_selector in json_value(), labels in labels()) {
        let object = json!({
            "apiVersion": "imds-operator.io/v1alpha1",
            "kind": "InstanceMetadataPolicy",
            "metadata": {"name": "p"},
            "spec": {"nodeSelector": node_selector, "metadataOptions": {"httpTokens": "required"}},
        });
        if let Ok(policy) = serde_json::from_value::<InstanceMetadataPolicy>(object)
            && let Ok(input) = PolicyInput::from_policy(&policy)
        {
            input.selects(&labels);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Option values and the complete request
// ---------------------------------------------------------------------------------------------

fn field() -> impl Strategy<Value = Field> {
    prop::sample::select(Field::ALL.to_vec())
}

fn toggle() -> impl Strategy<Value = Toggle> {
    prop_oneof![Just(Toggle::Enabled), Just(Toggle::Disabled)]
}

fn tokens() -> impl Strategy<Value = HttpTokens> {
    prop_oneof![Just(HttpTokens::Required), Just(HttpTokens::Optional)]
}

/// A valid value of `field`.
fn value_for(field: Field) -> BoxedStrategy<OptionValue> {
    match field {
        Field::HttpTokens => tokens().prop_map(OptionValue::Tokens).boxed(),
        Field::HopLimit => (1..=64i32).prop_map(OptionValue::HopLimit).boxed(),
        _ => toggle().prop_map(OptionValue::Toggle).boxed(),
    }
}

/// Any value of any kind (possibly the wrong kind for a field, hop limits out of range).
fn any_value() -> impl Strategy<Value = OptionValue> {
    prop_oneof![
        tokens().prop_map(OptionValue::Tokens),
        any::<i32>().prop_map(OptionValue::HopLimit),
        toggle().prop_map(OptionValue::Toggle),
    ]
}

fn full_options() -> impl Strategy<Value = FullOptions> {
    (tokens(), 1..=64i32, toggle(), toggle(), toggle()).prop_map(|(t, h, e, i, m)| FullOptions {
        http_tokens: t,
        hop_limit: h,
        http_endpoint: e,
        http_protocol_ipv6: i,
        instance_metadata_tags: m,
    })
}

fn metadata_options() -> impl Strategy<Value = MetadataOptions> {
    use prop::option::of;
    (of(tokens()), of(1..=64i32), of(toggle()), of(toggle()), of(toggle())).prop_map(|(t, h, e, i, m)| {
        MetadataOptions {
            http_tokens: t,
            http_put_response_hop_limit: h,
            http_endpoint: e,
            http_protocol_ipv6: i,
            instance_metadata_tags: m,
        }
    })
}

/// Text near the spellings of values: signs, leading zeros, overflowing numbers, case and
/// whitespace variants, and anything else.
fn option_text() -> impl Strategy<Value = String> {
    let spelled = vec![
        "required",
        "optional",
        "enabled",
        "disabled",
        "Required",
        " required",
        "enabled\n",
        "on",
        "",
        "1",
        "64",
        "65",
        "0",
        "-1",
        "+2",
        "02",
    ];
    prop_oneof![
        prop::sample::select(spelled).prop_map(String::from),
        "[+-]?0{0,3}[0-9]{1,3}",
        "[0-9]{10,25}",
        any::<String>(),
    ]
}

/// Reference for `OptionValue::parse`: EC2's spellings, exactly; a hop limit is what Rust's
/// `i32::from_str` reads (an optional `+`, ASCII digits, leading zeros allowed), in 1..=64.
fn model_parse(field: Field, text: &str) -> Option<OptionValue> {
    match field {
        Field::HttpTokens => match text {
            "required" => Some(OptionValue::Tokens(HttpTokens::Required)),
            "optional" => Some(OptionValue::Tokens(HttpTokens::Optional)),
            _ => None,
        },
        Field::HopLimit => {
            let digits = text.strip_prefix('+').unwrap_or(text);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let significant = digits.trim_start_matches('0');
            let n = match significant.len() {
                0 => 0,
                1 | 2 => significant.bytes().fold(0, |n, b| n * 10 + i32::from(b - b'0')),
                _ => return None,
            };
            (1..=64).contains(&n).then_some(OptionValue::HopLimit(n))
        }
        _ => match text {
            "enabled" => Some(OptionValue::Toggle(Toggle::Enabled)),
            "disabled" => Some(OptionValue::Toggle(Toggle::Disabled)),
            _ => None,
        },
    }
}

/// Whether `value` is of the kind `field` takes.
fn kind_matches(field: Field, value: OptionValue) -> bool {
    matches!(
        (field, value),
        (Field::HttpTokens, OptionValue::Tokens(_))
            | (Field::HopLimit, OptionValue::HopLimit(_))
            | (
                Field::HttpEndpoint | Field::HttpProtocolIpv6 | Field::InstanceMetadataTags,
                OptionValue::Toggle(_)
            )
    )
}

/// The pairs of a request's compact form, one corrupted: dropped, its `=` removed, or its value
/// replaced by text that is not a valid value of the option.
fn corrupt(pairs: &mut Vec<String>, at: usize, how: u8, text: &str) {
    let field = Field::ALL[at];
    match how % 3 {
        0 => {
            pairs.remove(at);
        }
        1 => pairs[at] = pairs[at].replace('=', ""),
        _ => pairs[at] = format!("{}={text}", field.name()),
    }
}

/// `text`, made invalid for `field` (by the reference model) when it is valid.
fn invalid_for(field: Field, text: String) -> String {
    match model_parse(field, &text) {
        Some(_) => text + "!",
        None => text,
    }
}

/// Text for the compact request form: its keys, `=`, `,`, values, and noise.
fn tag_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(Field::ALL.iter().map(|f| f.name()).collect::<Vec<_>>()).prop_map(String::from),
        prop::sample::select(vec!["=", ",", " ", "=="]).prop_map(String::from),
        option_text(),
    ];
    prop_oneof![
        1 => any::<String>(),
        4 => prop::collection::vec(piece, 0..16).prop_map(|p| p.concat()),
        2 => full_options().prop_map(|f| f.to_tag_value()),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Every valid value reads back from its EC2 spelling: parse(field, v.to_string()) == v.
    #[test]
    fn option_values_round_trip((field, value) in field().prop_flat_map(|f| (Just(f), value_for(f)))) {
        prop_assert_eq!(OptionValue::parse(field, &value.to_string()), Some(value));
    }

    /// `OptionValue::parse` never panics and agrees with the reference model; what it accepts is
    /// of the field's kind and reads back from its canonical spelling.
    #[test]
    fn option_value_parse_matches_the_model(field in field(), text in option_text()) {
        let parsed = OptionValue::parse(field, &text);
        prop_assert_eq!(parsed, model_parse(field, &text), "{:?}", text);
        if let Some(value) = parsed {
            prop_assert!(kind_matches(field, value));
            prop_assert_eq!(OptionValue::parse(field, &value.to_string()), Some(value));
        }
    }

    /// A hop limit outside 1..=64 is never a value.
    #[test]
    fn out_of_range_hop_limits_are_refused(hop in prop_oneof![i32::MIN..=0, 65..=i32::MAX, -2..=0, 65..=67]) {
        prop_assert_eq!(OptionValue::parse(Field::HopLimit, &hop.to_string()), None);
    }

    /// The compact request form round trips, fits an instance tag (256 characters), and its
    /// pairs may come in any order.
    #[test]
    fn tag_values_round_trip(full in full_options(), order in Just((0..5).collect::<Vec<usize>>()).prop_shuffle()) {
        let text = full.to_tag_value();
        prop_assert!(text.len() <= 256);
        prop_assert_eq!(FullOptions::from_tag_value(&text), Some(full));
        let pairs: Vec<&str> = text.split(',').collect();
        let shuffled: Vec<&str> = order.iter().map(|i| pairs[*i]).collect();
        prop_assert_eq!(FullOptions::from_tag_value(&shuffled.join(",")), Some(full));
    }

    /// A request with one option missing, without its `=`, or with a value invalid for that
    /// option (by the reference model) is refused.
    #[test]
    fn corrupt_tag_values_are_refused(full in full_options(), at in 0..5usize, how: u8, text in option_text()) {
        let text = invalid_for(Field::ALL[at], text);
        let mut pairs: Vec<String> = full.to_tag_value().split(',').map(String::from).collect();
        corrupt(&mut pairs, at, how, &text);
        let joined = pairs.join(",");
        prop_assert_eq!(FullOptions::from_tag_value(&joined), None, "{:?}", joined);
    }

    /// Parsing arbitrary text never panics; what it accepts is a valid request whose canonical
    /// form parses to the same.
    #[test]
    fn tag_value_parse_never_panics(text in tag_text()) {
        if let Some(full) = FullOptions::from_tag_value(&text) {
            prop_assert!((1..=64).contains(&full.hop_limit));
            prop_assert_eq!(FullOptions::from_tag_value(&full.to_tag_value()), Some(full));
        }
    }

    /// `merge`, per option: the desired value, else the observed one, else EC2's launch default.
    #[test]
    fn merge_prefers_desired_then_observed_then_defaults(
        desired in metadata_options(),
        observed in metadata_options(),
    ) {
        let merged = FullOptions::merge(&desired, &observed);
        for field in Field::ALL {
            let want = desired
                .get(field)
                .or(observed.get(field))
                .unwrap_or(FullOptions::EC2_LAUNCH_DEFAULTS.get(field));
            prop_assert_eq!(merged.get(field), want, "{}", field);
        }
        prop_assert_eq!(FullOptions::completed(&merged.to_options()), merged);
    }

    /// `with` and `MetadataOptions::set` change exactly one option, and only to a value of its
    /// kind (a value of another kind changes nothing).
    #[test]
    fn with_changes_one_option(full in full_options(), field in field(), value in any_value()) {
        let changed = full.with(field, value);
        let mut options = full.to_options();
        options.set(field, value);
        for f in Field::ALL {
            let want = if f == field && kind_matches(field, value) { value } else { full.get(f) };
            prop_assert_eq!(changed.get(f), want, "{}", f);
            prop_assert_eq!(options.get(f), Some(want), "{}", f);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records (ConfigMap data: one key per instance, the value `InstanceRecord::to_json()`)
// ---------------------------------------------------------------------------------------------

fn policy_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["a", "require-imdsv2", "system-nodes-hop-limit-2"]).prop_map(String::from),
        "\\PC{0,24}",
    ]
}

/// Any instant jiff can represent (years -9999..=9999, nanoseconds), and round ones.
fn timestamp() -> impl Strategy<Value = Timestamp> {
    let range = Timestamp::MIN.as_nanosecond()..=Timestamp::MAX.as_nanosecond();
    prop_oneof![
        range.prop_map(|n| Timestamp::from_nanosecond(n).expect("in range")),
        (0i64..4_000_000_000).prop_map(|s| Timestamp::from_second(s).expect("in range")),
    ]
}

fn change_record() -> impl Strategy<Value = ChangeRecord> {
    let state = prop_oneof![Just(ChangeState::Sent), Just(ChangeState::Accepted)];
    (
        policy_name(),
        "\\PC{0,40}",
        timestamp(),
        any::<bool>(),
        full_options(),
        state,
    )
        .prop_map(|(policy, node, at, ready, full, state)| ChangeRecord::new(&policy, &node, at, ready, &full, state))
}

/// Records as the operator writes them: per option a valid original and at least one policy.
fn valid_record() -> impl Strategy<Value = InstanceRecord> {
    let entry = field().prop_flat_map(|f| {
        let by = prop::collection::btree_set(policy_name(), 1..4);
        (Just(f.name().to_string()), value_for(f), by)
    });
    (prop::collection::vec(entry, 0..6), prop::option::of(change_record())).prop_map(|(entries, change)| {
        InstanceRecord {
            options: entries
                .into_iter()
                .map(|(name, v, by)| {
                    (
                        name,
                        OptionRecord {
                            original: v.to_string(),
                            by,
                        },
                    )
                })
                .collect(),
            change,
            reverted: None,
        }
    })
}

/// Invariants of every record `parse` accepts (its doc: known option names, originals valid
/// for their option, at least one policy each, a request that parses).
fn check_accepted(record: &InstanceRecord) -> Result<(), TestCaseError> {
    for (name, entry) in &record.options {
        let field = field_named(name);
        prop_assert!(field.is_some(), "unknown option {name:?} accepted");
        prop_assert!(model_parse(field.expect("known"), &entry.original).is_some());
        prop_assert!(!entry.by.is_empty());
    }
    if let Some(change) = &record.change {
        prop_assert!(FullOptions::from_tag_value(&change.request).is_some());
    }
    let again = InstanceRecord::parse("i-0", &record.to_json());
    prop_assert_eq!(again.as_ref(), Ok(record));
    Ok(())
}

/// Arbitrary JSON, with keys and strings biased toward the record's vocabulary.
fn json_value() -> impl Strategy<Value = Value> {
    let words = vec![
        "options",
        "change",
        "original",
        "by",
        "policy",
        "node",
        "at",
        "wasReady",
        "request",
        "state",
        "Sent",
        "Accepted",
        "httpTokens",
        "httpPutResponseHopLimit",
        "httpEndpoint",
        "httpProtocolIPv6",
        "instanceMetadataTags",
        "required",
        "2",
        "enabled",
        "In",
        "Exists",
        "key",
        "operator",
        "values",
        "matchLabels",
        "matchExpressions",
        "2026-01-01T00:00:00Z",
    ];
    let word = prop_oneof![3 => prop::sample::select(words).prop_map(String::from), 1 => "\\PC{0,10}"];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word.clone().prop_map(Value::from),
        full_options().prop_map(|f| Value::from(f.to_tag_value())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word.clone(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Text from outside: arbitrary strings, arbitrary bytes (as the ConfigMap's UTF-8 would carry
/// them), arbitrary JSON, and valid records cut short.
fn record_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        json_value().prop_map(|v| v.to_string()),
        (valid_record(), any::<prop::sample::Index>()).prop_map(|(r, at)| {
            let text = r.to_json();
            let cut = at.index(text.len() + 1);
            text.char_indices()
                .map(|(i, _)| i)
                .take_while(|i| *i < cut)
                .last()
                .map_or(String::new(), |i| text[..i].to_string())
        }),
    ]
}

/// A part of a record as JSON (`None`: the key is left out) and whether it is valid.
type Part = (Option<Value>, bool);

/// JSON of every type but those named.
fn json_except(except: &[&str]) -> impl Strategy<Value = Value> + use<> {
    let all = vec![
        ("null", Value::Null),
        ("bool", json!(true)),
        ("number", json!(1)),
        ("string", json!("x")),
        ("object", json!({})),
        ("array", json!([1])),
    ];
    let others: Vec<Value> = all
        .into_iter()
        .filter(|(t, _)| !except.contains(t))
        .map(|(_, v)| v)
        .collect();
    prop::sample::select(others)
}

/// A part: mostly `good` values (valid); else `bad` ones, another JSON type, or left out
/// (invalid). Bad parts are rare so that many records have exactly one.
fn part<G, B>(good: G, bad: B, json_type: &'static str) -> impl Strategy<Value = Part>
where
    G: Strategy<Value = Value> + 'static,
    B: Strategy<Value = Value> + 'static,
{
    prop_oneof![
        24 => good.prop_map(|v| (Some(v), true)),
        1 => bad.prop_map(|v| (Some(v), false)),
        1 => json_except(&[json_type]).prop_map(|v| (Some(v), false)),
        1 => Just((None, false)),
    ]
}

fn object(parts: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        parts
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect(),
    )
}

/// Names that are not one of the five options (near misses included).
fn unknown_option_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "httptokens",
            "HttpTokens",
            "hopLimit",
            "httpProtocolIpv6",
            "",
            "tags"
        ])
        .prop_map(String::from),
        "\\PC{0,16}",
    ]
    .prop_filter("not an option", |n| Field::ALL.iter().all(|f| f.name() != n))
}

/// One `options` entry: (key, JSON, valid). Valid: a known option name, an original valid for
/// it by the reference model, a non-empty list of policies.
fn entry_part() -> impl Strategy<Value = (String, Value, bool)> {
    field()
        .prop_flat_map(|f| {
            let name = prop_oneof![
                24 => Just((f.name().to_string(), true)),
                1 => unknown_option_name().prop_map(|n| (n, false)),
            ];
            let original = prop_oneof![
                24 => value_for(f).prop_map(|v| (Some(json!(v.to_string())), true)),
                2 => option_text().prop_map(move |t| (Some(json!(t)), model_parse(f, &t).is_some())),
                1 => json_except(&["string"]).prop_map(|v| (Some(v), false)),
                1 => Just((None, false)),
            ];
            let policies = prop::collection::btree_set(policy_name(), 1..4).prop_map(|s| json!(s));
            let by = part(policies, prop_oneof![Just(json!([])), Just(json!(["a", 1]))], "array");
            (name, original, by, prop::bool::weighted(0.02))
        })
        .prop_map(
            |((name, name_ok), (original, original_ok), (by, by_ok), not_an_object)| {
                if not_an_object {
                    return (name, json!("entry"), false);
                }
                let entry = object(vec![("original", original), ("by", by)]);
                (name, entry, name_ok && original_ok && by_ok)
            },
        )
}

fn options_part() -> impl Strategy<Value = Part> {
    let entries = prop::collection::vec(entry_part(), 0..5).prop_map(|entries| {
        // As in the JSON object: a later entry of the same name replaces an earlier one.
        let valid: BTreeMap<String, bool> = entries.iter().map(|(n, _, ok)| (n.clone(), *ok)).collect();
        let map: Map<String, Value> = entries.into_iter().map(|(n, v, _)| (n, v)).collect();
        (Some(Value::Object(map)), valid.values().all(|ok| *ok))
    });
    prop_oneof![
        1 => Just((None, true)),
        12 => entries,
        1 => json_except(&["object"]).prop_map(|v| (Some(v), false)),
    ]
}

/// Text that is not a timestamp.
fn bad_timestamp() -> impl Strategy<Value = Value> {
    let fixed = vec![
        "2024-13-01T00:00:00Z",
        "2024-01-01",
        "2024-01-01T00:00:00",
        "1700000000",
        "",
        "10000-01-01T00:00:00Z",
    ];
    prop_oneof![
        prop::sample::select(fixed).prop_map(Value::from),
        "[a-z ]{0,12}".prop_map(Value::from)
    ]
}

/// A compact request with one option corrupted (see [`corrupt`]).
fn bad_request() -> impl Strategy<Value = Value> {
    (full_options(), 0..5usize, any::<u8>(), option_text()).prop_map(|(f, at, how, t)| {
        let mut pairs: Vec<String> = f.to_tag_value().split(',').map(String::from).collect();
        corrupt(&mut pairs, at, how, &invalid_for(Field::ALL[at], t));
        Value::from(pairs.join(","))
    })
}

/// The `change` part. Valid: left out, `null`, or an object whose six fields are all valid.
fn change_part() -> impl Strategy<Value = Part> {
    let states = prop::sample::select(vec!["Sent", "Accepted"]).prop_map(Value::from);
    let bad_states = prop::sample::select(vec!["sent", "accepted", "", "Pending", "Sent "]).prop_map(Value::from);
    let at = timestamp().prop_map(|t| serde_json::to_value(t).expect("a timestamp serializes"));
    let fields = (
        part(policy_name().prop_map(Value::from), Just(json!(7)), "string"),
        part("\\PC{0,20}".prop_map(Value::from), Just(json!(null)), "string"),
        part(at, bad_timestamp(), "string"),
        part(any::<bool>().prop_map(Value::from), Just(json!("true")), "bool"),
        part(
            full_options().prop_map(|f| Value::from(f.to_tag_value())),
            bad_request(),
            "string",
        ),
        part(states, bad_states, "string"),
    );
    let change = fields.prop_map(|(p, n, at, r, q, s)| {
        let valid = p.1 && n.1 && at.1 && r.1 && q.1 && s.1;
        let names = ["policy", "node", "at", "wasReady", "request", "state"];
        let value = object(names.into_iter().zip([p.0, n.0, at.0, r.0, q.0, s.0]).collect());
        (Some(value), valid)
    });
    prop_oneof![
        1 => Just((None, true)),
        1 => Just((Some(Value::Null), true)),
        12 => change,
        1 => json_except(&["object", "null"]).prop_map(|v| (Some(v), false)),
    ]
}

/// A record as JSON text (compact or pretty, as a person's `kubectl edit` may leave it) and
/// whether every part of it is valid.
fn record_json() -> impl Strategy<Value = (String, bool)> {
    (options_part(), change_part(), any::<bool>()).prop_map(|((options, options_ok), (change, change_ok), pretty)| {
        let value = object(vec![("options", options), ("change", change)]);
        let text = if pretty {
            serde_json::to_string_pretty(&value).expect("JSON serializes")
        } else {
            value.to_string()
        };
        (text, options_ok && change_ok)
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// The stored form round trips: parse(to_json(r)) == r for every record the operator can
    /// write (any policy and node names, any timestamp), also pretty-printed; and the record is
    /// empty (its ConfigMap key is removed) exactly when it serializes to `{}`.
    #[test]
    fn valid_records_round_trip(record in valid_record(), id in "\\PC{0,20}") {
        let text = record.to_json();
        prop_assert_eq!(InstanceRecord::parse(&id, &text), Ok(record.clone()));
        let pretty = serde_json::to_string_pretty(&record).expect("a record serializes");
        prop_assert_eq!(InstanceRecord::parse(&id, &pretty), Ok(record.clone()));
        prop_assert_eq!(record.is_empty(), text == "{}");
    }

    /// Arbitrary text, bytes, JSON and truncated records never panic; whatever is accepted has
    /// only known options, valid originals, policies and a parsing request, and round trips.
    #[test]
    fn record_parse_never_panics(text in record_text()) {
        if let Ok(record) = InstanceRecord::parse("i-0", &text) {
            check_accepted(&record)?;
        }
    }

    /// Structurally valid JSON with bad values is invalid, never accepted: a record-shaped
    /// object is accepted exactly when every part is valid by the reference model (known option
    /// names, valid originals, non-empty `by`, the six change fields present with valid values
    /// and types); the error names the instance.
    #[test]
    fn record_json_is_accepted_iff_every_value_is_valid((text, valid) in record_json(), id in "\\PC{0,20}") {
        let parsed = InstanceRecord::parse(&id, &text);
        prop_assert_eq!(parsed.is_ok(), valid, "{}: {:?}", text, parsed);
        match parsed {
            Ok(record) => check_accepted(&record)?,
            Err(e) => prop_assert_eq!(e.instance_id, id),
        }
    }
}

#[test]
fn absent_provider_id_and_empty_record() {
    assert_eq!(provider_id::parse(None), Err(SkipReason::NoProviderId));
    assert_eq!(InstanceRecord::parse("i-0", "{}"), Ok(InstanceRecord::default()));
    assert_eq!(InstanceRecord::default().to_json(), "{}");
}
