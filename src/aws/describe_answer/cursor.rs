//! Skipping an element the reader does not follow without tokenizing it. An EC2 instance's
//! answer is mostly what the operator never reads (network interfaces and their addresses,
//! block devices, placement, CPU options…: most of its 5–15 kB); handing each of those tags to
//! the XML tokenizer as an event was most of the reading. [`subtree_end`] finds the end tag that
//! closes an element with a byte search over its `<`s instead.
//!
//! It is exact for what it accepts: in well-formed XML a `<` in content or an attribute value is
//! always escaped, so every raw `<` opens markup; comments, CDATA sections and processing
//! instructions (which may hold a `</name>` that is not one) are refused (`None`: the caller
//! tokenizes that subtree), and elements of the same name nested inside are counted. What it
//! does not do is check the skipped content is well-formed: nothing in it is read.

use super::AnswerError;
use quick_xml::reader::Reader;

/// The offset in `rest` just past the end tag that closes the element whose start tag `name`
/// ended right before `rest`, or `None` when the subtree holds a comment, CDATA section or
/// processing instruction, or has no such end tag (cut short).
fn subtree_end(rest: &[u8], name: &[u8]) -> Option<usize> {
    let mut depth = 1usize;
    let mut at = 0;
    while let Some(found) = memchr::memchr(b'<', rest.get(at..)?) {
        let open = at + found;
        let markup = rest.get(open + 1..)?;
        match markup.first()? {
            b'!' | b'?' => return None,
            b'/' => {
                if let Some(len) = end_tag_len(&markup[1..], name) {
                    depth -= 1;
                    if depth == 0 {
                        return Some(open + 2 + len);
                    }
                }
            }
            _ => {
                if opens(markup, name)? {
                    depth += 1;
                }
            }
        }
        at = open + 1;
    }
    None
}

/// With `after` the bytes after `</`: the length of `name`, blanks and `>` when it is the end
/// tag of `name`.
fn end_tag_len(after: &[u8], name: &[u8]) -> Option<usize> {
    let rest = after.strip_prefix(name)?;
    let blanks = rest.iter().take_while(|b| is_blank(**b)).count();
    (rest.get(blanks) == Some(&b'>')).then_some(name.len() + blanks + 1)
}

/// With `after` the bytes after `<`: whether this is a start tag of `name` that opens an element
/// (`Some(false)` for another name or `<name …/>`; `None` when the tag is cut short).
fn opens(after: &[u8], name: &[u8]) -> Option<bool> {
    let Some(rest) = after.strip_prefix(name) else {
        return Some(false);
    };
    match rest.first()? {
        b'>' => Some(true),
        b'/' => Some(false),
        b if is_blank(*b) => Some(!self_closing(rest)?),
        _ => Some(false),
    }
}

/// Whether the tag whose attributes start `rest` ends with `/>` (quoted values may hold `>`).
fn self_closing(rest: &[u8]) -> Option<bool> {
    let mut quote: Option<u8> = None;
    let mut previous = 0u8;
    for &b in rest {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(previous == b'/'),
            None => {}
        }
        previous = b;
    }
    None
}

/// XML's white space.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Where the reading of an answer is: a `quick-xml` reader over the rest of the body, started
/// again after each skipped element (so the reader's own end-tag checks are off; [`super::parse`]
/// checks end tags against the elements it follows).
pub(super) struct AnswerCursor<'a> {
    body: &'a [u8],
    /// Where in `body` the reader started.
    base: usize,
    pub(super) reader: Reader<&'a [u8]>,
}

impl<'a> AnswerCursor<'a> {
    pub(super) fn new(body: &'a [u8]) -> AnswerCursor<'a> {
        AnswerCursor {
            body,
            base: 0,
            reader: Self::reader(body),
        }
    }

    fn reader(rest: &'a [u8]) -> Reader<&'a [u8]> {
        let mut reader = Reader::from_reader(rest);
        let config = reader.config_mut();
        config.check_end_names = false;
        config.allow_unmatched_ends = true;
        reader
    }

    /// Skips the element whose start tag was just read: to its end tag by a byte search, or —
    /// when the search refuses the subtree — through the tokenizer. With `blanks_after`, the
    /// white space after it goes too (the caller reads no text there: it is the layout between
    /// elements, one text event per line of an indented answer otherwise).
    pub(super) fn skip_element(
        &mut self,
        name: quick_xml::name::QName<'_>,
        blanks_after: bool,
    ) -> Result<(), AnswerError> {
        let read = usize::try_from(self.reader.buffer_position())
            .map_err(|_| AnswerError::Shape("an answer larger than memory"))?;
        let here = self.base + read;
        let rest = self.body.get(here..).unwrap_or_default();
        match subtree_end(rest, name.as_ref().as_bytes()) {
            Some(len) => {
                let after = rest.get(len..).unwrap_or_default();
                let blanks = if blanks_after {
                    after.iter().take_while(|b| is_blank(**b)).count()
                } else {
                    0
                };
                self.base = here + len + blanks;
                self.reader = Self::reader(self.body.get(self.base..).unwrap_or_default());
            }
            None => {
                self.reader.read_to_end(name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::subtree_end;

    /// The text after the end tag that closes `name`, whose start tag ended before `rest`.
    fn after(rest: &str, name: &str) -> Option<&'static str> {
        let end = subtree_end(rest.as_bytes(), name.as_bytes())?;
        Some(rest[end..].to_string().leak())
    }

    #[test]
    fn finds_the_end_tag_that_closes_the_element() {
        let table = [
            ("16</code><name>x", "code", Some("<name>x")),
            ("</code >tail", "code", Some("tail")),
            ("<item><a>1</a></item><item/></set>rest", "set", Some("rest")),
            ("<a>1</a><b><c/></b></set><!-- after -->", "set", Some("<!-- after -->")),
            ("\n  <a>1</a>\n</sets></set>x", "set", Some("x")),
            // The same name nested: counted; a self-closing one does not open.
            ("<set><set/><x/></set></set>after", "set", Some("after")),
            ("<set a=\"1\"/><set b='>'/></set>z", "set", Some("z")),
            ("<set b='/>'>in</set></set>z", "set", Some("z")),
            // Longer names sharing a prefix are other elements.
            ("<setting>1</setting></sets></set>!", "set", Some("!")),
            ("<code>x</code>", "set", None),
            // Cut short.
            ("<item>1</item></se", "set", None),
            ("<set a=\"1\"", "set", None),
            // A comment, CDATA or processing instruction is left to the tokenizer.
            ("<!-- </set> --></set>", "set", None),
            ("<![CDATA[</set>]]></set>", "set", None),
            ("<?pi </set>?></set>", "set", None),
        ];
        for (rest, name, want) in table {
            assert_eq!(after(rest, name), want, "{rest:?} closing {name}");
        }
    }
}
