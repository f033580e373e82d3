//! Query-protocol parameters: form decoding, `Name.N` lists, typed values.

use std::collections::BTreeMap;

use imds_core::api::{HttpTokens, Toggle};

use super::error::ApiError;

/// `{prefix}.1`, `{prefix}.2`, ... up to the first gap.
pub(super) fn indexed_list(params: &BTreeMap<String, String>, prefix: &str) -> Result<Vec<String>, ApiError> {
    let mut values = Vec::new();
    for n in 1.. {
        match params.get(&format!("{prefix}.{n}")) {
            Some(value) => values.push(value.clone()),
            None => break,
        }
    }
    // A list that does not start at 1 or has a gap is a malformed request, not an empty list.
    let indexed = params
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.strip_prefix('.'))
        .filter(|rest| !rest.contains('.'))
        .count();
    if indexed != values.len() {
        return Err(ApiError::invalid(format!(
            "The list {prefix}.N is not numbered 1, 2, 3, ..."
        )));
    }
    Ok(values)
}

/// A parameter parsed with `parse`, `None` when absent.
pub(super) fn optional<T>(
    params: &BTreeMap<String, String>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    params.get(name).map(|v| parse(v)).transpose()
}

/// An integer parameter, `None` when absent.
pub(super) fn optional_int(params: &BTreeMap<String, String>, name: &str) -> Result<Option<i32>, ApiError> {
    optional(params, name, |v| {
        v.parse::<i32>()
            .map_err(|_| ApiError::invalid(format!("Invalid value '{v}' for {name}: not an integer")))
    })
}

/// A boolean parameter, false when absent.
pub(super) fn flag(params: &BTreeMap<String, String>, name: &str) -> Result<bool, ApiError> {
    Ok(optional(params, name, |v| match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::invalid(format!(
            "Invalid value '{v}' for {name}: expecting true or false"
        ))),
    })?
    .unwrap_or(false))
}

/// `HttpTokens`: `required` or `optional`.
pub(super) fn parse_tokens(value: &str) -> Result<HttpTokens, ApiError> {
    match value {
        "required" => Ok(HttpTokens::Required),
        "optional" => Ok(HttpTokens::Optional),
        _ => Err(ApiError::invalid(format!(
            "Value ({value}) for parameter HttpTokens is invalid. Valid values are: optional, required."
        ))),
    }
}

/// An on/off option: `enabled` or `disabled`.
pub(super) fn parse_toggle(name: &str, value: &str) -> Result<Toggle, ApiError> {
    match value {
        "enabled" => Ok(Toggle::Enabled),
        "disabled" => Ok(Toggle::Disabled),
        _ => Err(ApiError::invalid(format!(
            "Value ({value}) for parameter {name} is invalid. Valid values are: enabled, disabled."
        ))),
    }
}

/// Parses `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte, UTF-8 overall).
/// A later duplicate key wins.
pub(super) fn parse_form(input: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for pair in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        params.insert(percent_decode(key)?, percent_decode(value)?);
    }
    Ok(params)
}

fn percent_decode(input: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
                match (hex(bytes.next()), hex(bytes.next())) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err("The request has an invalid percent-encoding".to_string()),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| "The request is not valid UTF-8".to_string())
}
