//! EC2's XML: the response envelope, `<return>true</return>` answers, error documents, escaping.

use std::fmt::Write as _;

use super::NAMESPACE;
use super::error::ApiError;

/// `<?xml ...?><{element} xmlns=...><requestId>...</requestId>`; the caller closes `element`.
pub(super) fn response_open(element: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{element} xmlns=\"{NAMESPACE}\"><requestId>{request_id}</requestId>"
    )
}

/// A complete `<{element}>` answer that says `<return>true</return>`.
pub(super) fn return_true(element: &str, request_id: &str) -> String {
    let mut xml = response_open(element, request_id);
    let _ = write!(xml, "<return>true</return></{element}>");
    xml
}

/// The error document `aws-sdk-ec2`'s `ec2_query_errors::parse_error_metadata` reads.
pub(super) fn error_xml(error: &ApiError, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
         <Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        escape(&error.code),
        escape(&error.message)
    )
}

/// Escapes text for an XML element.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
