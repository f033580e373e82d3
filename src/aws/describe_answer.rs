//! DescribeInstances answers read for what the operator keeps. The SDK's generated deserializer
//! builds every field of every instance and every tag with its XML decoder (`aws_smithy_xml`):
//! `perf` over a quiet resync of 5,000 instances put 42–47% of the operator's CPU there, most of
//! it in the decoder's tokens and scopes (re-reading an element to its end to drop it), ~17% in
//! the tag lists alone. [`LeanDescribeAnswers`] (an interceptor on the DescribeInstances call)
//! puts [`LeanDeserializer`] in the operation's configuration in place of the SDK's: a success
//! answer is read in one pass by `quick-xml`'s borrowing reader (no allocation per element) into
//! the SDK's own output types, keeping the instance ID, state, metadata options, launch time and
//! the tags the operator reads (those of the record and the launch source, and the first key IMDS
//! cannot serve). An error answer is read for what the SDK's error deserializer reads of it (code,
//! message, request ID), so retries and the classification of errors are unchanged.

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::types::{
    HttpTokensState, Instance, InstanceMetadataEndpointState, InstanceMetadataOptionsState,
    InstanceMetadataProtocolState, InstanceMetadataTagsState, InstanceState, InstanceStateName, Reservation, Tag,
};
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
use quick_xml::events::{BytesRef, Event};
use quick_xml::reader::Reader;

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

/// Puts [`LeanDeserializer`] in place of the SDK's deserializer for one DescribeInstances call
/// (all its attempts).
#[derive(Debug, Default)]
pub struct LeanDescribeAnswers;

impl Intercept for LeanDescribeAnswers {
    fn name(&self) -> &'static str {
        "LeanDescribeAnswers"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(SharedResponseDeserializer::new(LeanDeserializer));
        Ok(())
    }
}

/// Reads a success answer with [`parse`], an error answer for its code, message and request ID
/// (what the SDK's error deserializer reads of an EC2 error).
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

/// What is read of one instance so far (plain fields: the SDK's `Instance` builder is built once,
/// at the end, not moved for every element).
#[derive(Default)]
struct InstanceReading {
    id: Option<String>,
    state: Option<InstanceStateName>,
    launched: Option<DateTime>,
    options: Option<aws_sdk_ec2::types::builders::InstanceMetadataOptionsResponseBuilder>,
    tags: Vec<Tag>,
    unservable_kept: bool,
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
    reservations: Vec<Reservation>,
    instances: Vec<Instance>,
    instance: Option<InstanceReading>,
    next_token: Option<String>,
}

/// A DescribeInstances success body, with only what the operator reads.
pub fn parse(body: &[u8]) -> Result<DescribeInstancesOutput, AnswerError> {
    let mut reader = Reader::from_reader(body);
    let mut answer = AnswerReading::default();
    let mut seen_root = false;
    loop {
        match reader.read_event()? {
            Event::Start(start) => {
                let element = Element::named(start.local_name().as_ref());
                if answer.open.is_empty() {
                    if seen_root || element != Element::Response {
                        return Err(AnswerError::Shape("the root element is not DescribeInstancesResponse"));
                    }
                    seen_root = true;
                }
                answer.start(element);
            }
            Event::Empty(empty) => {
                let element = Element::named(empty.local_name().as_ref());
                if answer.open.is_empty() {
                    return Err(AnswerError::Shape("the root element is not DescribeInstancesResponse"));
                }
                answer.start(element);
                answer.end()?;
            }
            Event::End(_) => answer.end()?,
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
    Ok(DescribeInstancesOutput::builder()
        .set_reservations(Some(answer.reservations))
        .set_next_token(answer.next_token)
        .build())
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
            [.., Element::ReservationSet, Element::Item] => {
                let instances = std::mem::take(&mut self.instances);
                self.reservations
                    .push(Reservation::builder().set_instances(Some(instances)).build());
            }
            [.., Element::InstancesSet, Element::Item] => {
                if let Some(instance) = self.instance.take() {
                    self.instances.push(instance.build());
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
                    instance.state = Some(InstanceStateName::from(text));
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
                self.launched = Some(launched);
            }
            Element::MetadataOptions => {
                self.options.get_or_insert_with(Default::default);
            }
            _ => {}
        }
        Ok(())
    }

    /// The end of one of the `metadataOptions`.
    fn end_option(&mut self, field: OptionField, text: &str) -> Result<(), AnswerError> {
        let options = self.options.take().unwrap_or_default();
        self.options = Some(match field {
            OptionField::State => options.state(InstanceMetadataOptionsState::from(text)),
            OptionField::HttpTokens => options.http_tokens(HttpTokensState::from(text)),
            OptionField::HopLimit => options.http_put_response_hop_limit(
                text.trim()
                    .parse()
                    .map_err(|_| AnswerError::Shape("httpPutResponseHopLimit is not an integer"))?,
            ),
            OptionField::HttpEndpoint => options.http_endpoint(InstanceMetadataEndpointState::from(text)),
            OptionField::HttpProtocolIpv6 => options.http_protocol_ipv6(InstanceMetadataProtocolState::from(text)),
            OptionField::InstanceMetadataTags => options.instance_metadata_tags(InstanceMetadataTagsState::from(text)),
        });
        Ok(())
    }

    /// The end of a tag's `key` (kept only when [`kept_tag`] says so) or `value`.
    fn end_tag_field(&mut self, field: Element, text: &str) {
        match field {
            Element::Key if kept_tag(text, !self.unservable_kept) => self.tag_key = Some(text.to_string()),
            Element::Key => self.tag_key = None,
            Element::Value => {
                self.tag_value.clear();
                self.tag_value.push_str(text);
                self.tag_has_value = true;
            }
            _ => {}
        }
    }

    /// The end of a tag: kept when its key is.
    fn end_tag(&mut self) {
        if let Some(key) = self.tag_key.take() {
            self.unservable_kept |= !imds_core::plan::guards::servable_tag_key(&key);
            let value = self.tag_has_value.then(|| self.tag_value.clone());
            self.tags.push(Tag::builder().key(key).set_value(value).build());
        }
        self.tag_value.clear();
        self.tag_has_value = false;
    }

    /// The SDK's instance.
    fn build(self) -> Instance {
        let mut instance = Instance::builder()
            .set_instance_id(self.id)
            .set_launch_time(self.launched)
            .set_tags(Some(self.tags));
        if let Some(state) = self.state {
            instance = instance.state(InstanceState::builder().name(state).build());
        }
        if let Some(options) = self.options {
            instance = instance.metadata_options(options.build());
        }
        instance.build()
    }
}

#[cfg(test)]
mod tests;
