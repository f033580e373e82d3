//! DescribeInstances answers read for what the operator keeps. The SDK's generated deserializer
//! builds every field of every instance and every tag with its XML decoder (`aws_smithy_xml`):
//! `perf` over a quiet resync of 5,000 instances put 42–47% of the operator's CPU there, most of
//! it in the decoder's tokens and scopes (re-reading an element to its end to drop it), ~17% in
//! the tag lists alone. [`LeanDescribeAnswers`] (an interceptor on the DescribeInstances call)
//! puts [`LeanDeserializer`] in the operation's configuration in place of the SDK's: a success
//! answer is read in one pass by `quick-xml`'s borrowing reader (no allocation per element)
//! straight into [`InstanceFacts`] — the instance ID, whether it is gone, metadata options,
//! launch time, the tag keys the operator reads (the record's, the first key IMDS cannot serve)
//! and the launch source its tags name. The page is handed over through the interceptor
//! ([`LeanDescribeAnswers::take_page`]); the SDK's output carries only the `nextToken`: its
//! `Instance` has ~60 fields, and building, moving and dropping 5,000 of them per resync was
//! `perf`'s next cost after the reading. An error answer is read for what the SDK's error
//! deserializer reads of it (code, message, request ID), so retries and the classification of
//! errors are unchanged.

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, Error, Output, OutputOrError,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_types::DateTime;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::Format;
use imds_core::api::{HttpTokens, Toggle};
use imds_core::cluster::CLUSTER_TAG_PREFIX;
use imds_core::launch_source::{LaunchSource, SOURCE_TAGS, launch_source};
use imds_core::options::{ApplyState, ObservedOptions};
use k8s_openapi::jiff::Timestamp;
use quick_xml::events::{BytesRef, Event};
use quick_xml::reader::Reader;
use std::sync::{Arc, Mutex};

/// The instance tag in which versions before 0.2 recorded an instance's original options. It is
/// never read now (anyone with `ec2:CreateTags` could forge it); the record is kept in the cluster
/// (`controller::records`).
pub const ORIGINAL_OPTIONS_TAG: &str = "imds-operator.io:original-options";

/// The tag keys [`InstanceFacts::tag_keys`] always keeps.
pub const READ_TAG_KEYS: &[&str] = &[ORIGINAL_OPTIONS_TAG];

/// What DescribeInstances says of one instance, beyond the options.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InstanceFacts {
    /// The metadata options.
    pub options: ObservedOptions,
    /// The instance's tag keys the operator reads: [`READ_TAG_KEYS`], and the first key IMDS
    /// cannot serve as instance metadata tags (the tags guard names it). The rest are not kept:
    /// an EKS instance carries a dozen tags, and the cache holds every instance of the fleet.
    pub tag_keys: Vec<String>,
    /// `LaunchTime`.
    pub launched: Option<Timestamp>,
    /// The launch template, node group, `EC2NodeClass` or Auto Scaling group its tags name.
    pub launch_source: Option<LaunchSource>,
}

/// One instance of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedInstance {
    /// Its ID.
    pub instance_id: String,
    /// Its `kubernetes.io/cluster/<name>` tag key, when it has exactly one (how the adaptor learns
    /// the cluster's tag to list by; not kept in the cache).
    pub cluster_tag_key: Option<String>,
    /// Its facts; `None` when it is terminated or shutting down (EC2 lists those for about an
    /// hour; to the operator they are gone).
    pub facts: Option<InstanceFacts>,
}

/// One DescribeInstances answer as the operator reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeanPage {
    /// The instances, in the answer's order.
    pub instances: Vec<ListedInstance>,
    /// The token of the next page, if there is one.
    pub next_token: Option<String>,
}

/// Where the deserializer leaves the page it read for the caller.
type PageSlot = Arc<Mutex<Option<LeanPage>>>;

/// Puts [`LeanDeserializer`] in place of the SDK's deserializer for one DescribeInstances call
/// (all its attempts); the page it read is then [`LeanDescribeAnswers::take_page`]. Give the
/// call a clone and keep one.
#[derive(Clone, Debug, Default)]
pub struct LeanDescribeAnswers {
    page: PageSlot,
}

impl LeanDescribeAnswers {
    /// The page of the call's successful attempt (taken: a second call gives `None`).
    pub fn take_page(&self) -> Option<LeanPage> {
        self.page.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

impl Intercept for LeanDescribeAnswers {
    fn name(&self) -> &'static str {
        "LeanDescribeAnswers"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let deserializer = LeanDeserializer {
            page: self.page.clone(),
        };
        cfg.interceptor_state()
            .store_put(SharedResponseDeserializer::new(deserializer));
        Ok(())
    }
}

/// Reads a success answer with [`parse`] into the slot of its [`LeanDescribeAnswers`] (the SDK's
/// output keeps only the `nextToken`), an error answer for its code, message and request ID (what
/// the SDK's error deserializer reads of an EC2 error).
#[derive(Debug)]
pub struct LeanDeserializer {
    page: PageSlot,
}

impl DeserializeResponse for LeanDeserializer {
    fn deserialize_nonstreaming(&self, response: &HttpResponse) -> OutputOrError {
        let body = response.body().bytes().unwrap_or_default();
        if !response.status().is_success() {
            let error = DescribeInstancesError::generic(error_metadata(body));
            return Err(OrchestratorError::operation(Error::erase(error)));
        }
        let page = parse(body).map_err(|e| OrchestratorError::response(Box::new(e)))?;
        let output = DescribeInstancesOutput::builder()
            .set_next_token(page.next_token.clone())
            .build();
        *self.page.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(page);
        Ok(Output::erase(output))
    }
}

/// The code, message and request ID of an EC2 error answer
/// (`<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…`).
fn error_metadata(body: &[u8]) -> ErrorMetadata {
    let mut meta = ErrorMetadata::builder();
    let mut reader = Reader::from_reader(body);
    let mut open: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(start)) => {
                open.push(start.local_name().as_ref().to_string());
                text.clear();
            }
            Ok(Event::Text(t)) => text.push_str(&t.xml10_content()),
            Ok(Event::GeneralRef(r)) => text.extend(resolve(&r).ok()),
            Ok(Event::End(_)) => {
                let path: Vec<&str> = open.iter().map(String::as_str).collect();
                meta = match path.as_slice() {
                    ["Response", "Errors", "Error", "Code"] => meta.code(std::mem::take(&mut text)),
                    ["Response", "Errors", "Error", "Message"] => meta.message(std::mem::take(&mut text)),
                    ["Response", "RequestID"] => meta.custom("aws_request_id", std::mem::take(&mut text)),
                    _ => meta,
                };
                open.pop();
            }
            Ok(Event::Eof) => break,
            Err(_) => return ErrorMetadata::builder().message("unreadable EC2 error answer").build(),
            Ok(_) => {}
        }
    }
    meta.build()
}

/// Why a success body is not a DescribeInstances answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Not well-formed XML (or cut short).
    #[error("DescribeInstances answer is not well-formed XML: {0}")]
    Xml(#[from] quick_xml::Error),
    /// Well-formed, but not what EC2 answers.
    #[error("DescribeInstances answer: {0}")]
    Shape(&'static str),
}

/// The elements whose place in an answer the reader follows; the rest are [`Element::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
    Response,
    ReservationSet,
    InstancesSet,
    Item,
    InstanceId,
    InstanceState,
    Name,
    LaunchTime,
    TagSet,
    Key,
    Value,
    MetadataOptions,
    NextToken,
    Option(OptionField),
    Other,
}

impl Element {
    fn named(local: &str) -> Element {
        match local {
            "DescribeInstancesResponse" => Element::Response,
            "reservationSet" => Element::ReservationSet,
            "instancesSet" => Element::InstancesSet,
            "item" => Element::Item,
            "instanceId" => Element::InstanceId,
            "instanceState" => Element::InstanceState,
            "name" => Element::Name,
            "launchTime" => Element::LaunchTime,
            "tagSet" => Element::TagSet,
            "key" => Element::Key,
            "value" => Element::Value,
            "metadataOptions" => Element::MetadataOptions,
            "nextToken" => Element::NextToken,
            other => OptionField::named(other).map_or(Element::Other, Element::Option),
        }
    }
}

/// The metadata options EC2 answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// What is read of one instance so far.
#[derive(Default)]
struct InstanceReading {
    id: Option<String>,
    gone: bool,
    launched: Option<Timestamp>,
    options: Option<ObservedOptions>,
    tag_keys: Vec<String>,
    /// The launch source's tags (key, value).
    source_tags: Vec<(&'static str, String)>,
    /// Whether the first tag key IMDS cannot serve has been seen.
    unservable_seen: bool,
    /// The first `kubernetes.io/cluster/` tag key, and how many there were.
    cluster_tag_key: Option<String>,
    cluster_tag_keys: usize,
    /// The key of the tag being read, when it is kept.
    tag_key: Option<String>,
    /// The value of the tag being read (a buffer reused across tags: most are not kept), and
    /// whether it had one.
    tag_value: String,
    tag_has_value: bool,
}

/// The answer read so far.
#[derive(Default)]
struct AnswerReading {
    /// The open elements, outermost first.
    open: Vec<Element>,
    /// The text of the innermost open element (entities resolved).
    text: String,
    instances: Vec<ListedInstance>,
    instance: Option<InstanceReading>,
    next_token: Option<String>,
}

/// A DescribeInstances success body, with only what the operator reads. The elements it does
/// not follow are skipped to their end tag by a byte search (`cursor`), not tokenized.
pub fn parse(body: &[u8]) -> Result<LeanPage, AnswerError> {
    let mut at = cursor::AnswerCursor::new(body);
    let mut answer = AnswerReading::default();
    let mut seen_root = false;
    loop {
        match at.reader.read_event()? {
            Event::Start(start) => {
                let element = Element::named(start.local_name().as_ref());
                if answer.open.is_empty() {
                    if seen_root || element != Element::Response {
                        return Err(AnswerError::Shape("the root element is not DescribeInstancesResponse"));
                    }
                    seen_root = true;
                }
                if element == Element::Other {
                    at.skip_element(start.name(), !answer.wants_text())?;
                    continue;
                }
                answer.start(element);
            }
            Event::Empty(empty) => {
                let element = Element::named(empty.local_name().as_ref());
                if answer.open.is_empty() {
                    return Err(AnswerError::Shape("the root element is not DescribeInstancesResponse"));
                }
                if element != Element::Other {
                    answer.start(element);
                    answer.end()?;
                }
            }
            Event::End(end) => {
                // The reader's own check is off (it restarts after each skip): the end tag must
                // close the innermost open element.
                if answer.open.last() != Some(&Element::named(end.local_name().as_ref())) {
                    return Err(AnswerError::Shape("an end tag that does not close the open element"));
                }
                answer.end()?;
            }
            Event::Text(text) => {
                if answer.wants_text() {
                    answer.text.push_str(&text.xml10_content());
                }
            }
            Event::GeneralRef(reference) => {
                if answer.wants_text() {
                    answer.text.push(resolve(&reference)?);
                }
            }
            Event::CData(data) => {
                if answer.wants_text() {
                    answer.text.push_str(&data.xml10_content());
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !seen_root || !answer.open.is_empty() {
        return Err(AnswerError::Shape("the answer ends before its root element closes"));
    }
    Ok(LeanPage {
        instances: answer.instances,
        next_token: answer.next_token,
    })
}

/// The character an entity or character reference stands for.
fn resolve(reference: &BytesRef<'_>) -> Result<char, AnswerError> {
    if let Some(c) = reference.resolve_char_ref()? {
        return Ok(c);
    }
    quick_xml::escape::resolve_predefined_entity(reference.as_ref())
        .and_then(|s| s.chars().next())
        .ok_or(AnswerError::Shape("an unknown entity reference"))
}

impl AnswerReading {
    /// Whether the text of the innermost open element is read.
    fn wants_text(&self) -> bool {
        matches!(
            self.open.last(),
            Some(
                Element::InstanceId
                    | Element::Name
                    | Element::LaunchTime
                    | Element::Option(_)
                    | Element::Key
                    | Element::Value
                    | Element::NextToken
            )
        )
    }

    fn start(&mut self, element: Element) {
        self.open.push(element);
        self.text.clear();
        match self.open.as_slice() {
            [.., Element::InstancesSet, Element::Item] => self.instance = Some(InstanceReading::default()),
            [.., Element::InstancesSet, Element::Item, Element::TagSet, Element::Item] => {
                if let Some(instance) = &mut self.instance {
                    instance.tag_key = None;
                    instance.tag_value.clear();
                    instance.tag_has_value = false;
                }
            }
            _ => {}
        }
    }

    fn end(&mut self) -> Result<(), AnswerError> {
        let text = std::mem::take(&mut self.text);
        let ended = self.end_with(&text);
        self.text = text;
        self.text.clear();
        self.open.pop();
        ended
    }

    /// The end of the innermost open element, whose text is `text`.
    fn end_with(&mut self, text: &str) -> Result<(), AnswerError> {
        match self.open.as_slice() {
            [] => return Err(AnswerError::Shape("an end tag with no open element")),
            [Element::Response, Element::NextToken] => self.next_token = Some(text.to_string()),
            [.., Element::InstancesSet, Element::Item] => {
                if let Some(listed) = self.instance.take().and_then(InstanceReading::listed) {
                    self.instances.push(listed);
                }
            }
            [.., Element::InstancesSet, Element::Item, field] => {
                if let Some(instance) = &mut self.instance {
                    instance.end_field(*field, text)?;
                }
            }
            [
                ..,
                Element::InstancesSet,
                Element::Item,
                Element::InstanceState,
                Element::Name,
            ] => {
                if let Some(instance) = &mut self.instance {
                    instance.gone = matches!(text, "terminated" | "shutting-down");
                }
            }
            [
                ..,
                Element::InstancesSet,
                Element::Item,
                Element::MetadataOptions,
                Element::Option(field),
            ] => {
                if let Some(instance) = &mut self.instance {
                    instance.end_option(*field, text)?;
                }
            }
            [
                ..,
                Element::InstancesSet,
                Element::Item,
                Element::TagSet,
                Element::Item,
                last,
            ] => {
                if let Some(instance) = &mut self.instance {
                    instance.end_tag_field(*last, text);
                }
            }
            [.., Element::InstancesSet, Element::Item, Element::TagSet, Element::Item] => {
                if let Some(instance) = &mut self.instance {
                    instance.end_tag();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl InstanceReading {
    /// The end of a direct child of the instance's `item`.
    fn end_field(&mut self, field: Element, text: &str) -> Result<(), AnswerError> {
        match field {
            Element::InstanceId => self.id = Some(text.to_string()),
            Element::LaunchTime => {
                let launched = DateTime::from_str(text, Format::DateTimeWithOffset)
                    .map_err(|_| AnswerError::Shape("launchTime is not a timestamp"))?;
                self.launched = Timestamp::from_second(launched.secs()).ok();
            }
            Element::MetadataOptions => {
                self.options.get_or_insert_with(ObservedOptions::default);
            }
            _ => {}
        }
        Ok(())
    }

    /// The end of one of the `metadataOptions` (EC2's spellings; anything else is unknown, and a
    /// hop limit outside EC2's 1–64 too).
    fn end_option(&mut self, field: OptionField, text: &str) -> Result<(), AnswerError> {
        let options = self.options.get_or_insert_with(Default::default);
        let values = &mut options.values;
        match field {
            OptionField::State => {
                options.state = if text == "pending" {
                    ApplyState::Pending
                } else {
                    ApplyState::Applied
                }
            }
            OptionField::HttpTokens => values.http_tokens = HttpTokens::from_ec2(text),
            OptionField::HopLimit => {
                let hop: i32 = text
                    .trim()
                    .parse()
                    .map_err(|_| AnswerError::Shape("httpPutResponseHopLimit is not an integer"))?;
                values.http_put_response_hop_limit = Some(hop).filter(|h| imds_core::options::HOP_LIMITS.contains(h));
            }
            OptionField::HttpEndpoint => values.http_endpoint = Toggle::from_ec2(text),
            OptionField::HttpProtocolIpv6 => values.http_protocol_ipv6 = Toggle::from_ec2(text),
            OptionField::InstanceMetadataTags => values.instance_metadata_tags = Toggle::from_ec2(text),
        }
        Ok(())
    }

    /// The end of a tag's `key` (kept when [`InstanceReading::keeps`] says so) or `value`.
    fn end_tag_field(&mut self, field: Element, text: &str) {
        match field {
            Element::Key if self.keeps(text) => self.tag_key = Some(text.to_string()),
            Element::Key => self.tag_key = None,
            Element::Value => {
                self.tag_value.clear();
                self.tag_value.push_str(text);
                self.tag_has_value = true;
            }
            _ => {}
        }
    }

    /// Whether the tag `key` is read: [`READ_TAG_KEYS`], the launch source's tags, the cluster's
    /// tag, and the first key IMDS cannot serve.
    fn keeps(&self, key: &str) -> bool {
        READ_TAG_KEYS.contains(&key)
            || SOURCE_TAGS.contains(&key)
            || key.starts_with(CLUSTER_TAG_PREFIX)
            || (!self.unservable_seen && !imds_core::plan::guards::servable_tag_key(key))
    }

    /// The end of a tag: its key is kept among the tag keys (the record's, the first
    /// unservable), its value when the launch source reads it.
    fn end_tag(&mut self) {
        if let Some(key) = self.tag_key.take() {
            let first_unservable = !self.unservable_seen && !imds_core::plan::guards::servable_tag_key(&key);
            self.unservable_seen |= first_unservable;
            if let Some(source) = SOURCE_TAGS.iter().find(|s| **s == key)
                && self.tag_has_value
            {
                self.source_tags.push((*source, self.tag_value.clone()));
            }
            if key.starts_with(CLUSTER_TAG_PREFIX) {
                self.cluster_tag_keys += 1;
                self.cluster_tag_key.get_or_insert_with(|| key.clone());
            }
            if first_unservable || READ_TAG_KEYS.contains(&key.as_str()) {
                self.tag_keys.push(key);
            }
        }
        self.tag_value.clear();
        self.tag_has_value = false;
    }

    /// The instance read (none without an ID).
    fn listed(self) -> Option<ListedInstance> {
        let instance_id = self.id?;
        let cluster_tag_key = self.cluster_tag_key.filter(|_| self.cluster_tag_keys == 1);
        if self.gone {
            return Some(ListedInstance {
                instance_id,
                cluster_tag_key,
                facts: None,
            });
        }
        let source_tags = self.source_tags;
        let launch_source = launch_source(|key| source_tags.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str()));
        let facts = InstanceFacts {
            options: self.options.unwrap_or_default(),
            tag_keys: self.tag_keys,
            launched: self.launched,
            launch_source,
        };
        Some(ListedInstance {
            instance_id,
            cluster_tag_key,
            facts: Some(facts),
        })
    }
}

mod cursor;

#[cfg(test)]
mod tests;
