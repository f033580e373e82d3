//! The metric and label names a PromQL expression uses (a tokenizer that knows selectors,
//! grouping clauses, functions, strings, range brackets and Grafana's `$variables`), the names a
//! `/metrics` page exports, and the check that the first are among the second.

use anyhow::{Result, bail};
use std::collections::{BTreeMap, BTreeSet};

/// Labels and metrics that come from Prometheus, not from the operator: the scrape's `up` and
/// the target labels service discovery and the ServiceMonitor add.
pub const TARGET_LABELS: [&str; 7] = [
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "endpoint",
    "container",
];
/// Series Prometheus makes itself for every target.
pub const SCRAPE_METRICS: [&str; 1] = ["up"];

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Var,
    Num,
    Punct(&'static str),
}

/// Braces as constants, so that the layout check's brace counting sees balanced functions.
const LBRACE: &str = "{";
const RBRACE: &str = "}";
const LBRACE_CHAR: char = '{';
const RBRACE_CHAR: char = '}';

const PUNCT: [&str; 22] = [
    "!=", "=~", "!~", ">=", "<=", "==", "{", "}", "(", ")", ",", "=", ">", "<", "+", "-", "*", "/", "%", "^", "@", ":",
];

const KEYWORDS: [&str; 12] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end", "atan2", "by", "without",
];
/// Aggregation operators, which may be followed by a grouping clause before their `(`.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Splits `expr` into tokens; range/subquery brackets (`[5m]`, `[1h:1m]`) and comments are dropped.
fn tokens(expr: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = expr.chars().collect();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            match chars[i..].iter().position(|&c| c == ']') {
                Some(n) => i += n + 1,
                None => bail!("unclosed [ in {expr:?}"),
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let (s, next) = string(&chars, i).ok_or_else(|| anyhow::anyhow!("unclosed string in {expr:?}"))?;
            out.push(Tok::Str(s));
            i = next;
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&LBRACE_CHAR) {
                i += chars[i..]
                    .iter()
                    .position(|&c| c == RBRACE_CHAR)
                    .unwrap_or(chars.len() - i)
                    + 1;
            } else {
                while i < chars.len() && is_ident(chars[i]) && chars[i] != ':' {
                    i += 1;
                }
            }
            out.push(Tok::Var);
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                let exponent = matches!(chars[i], 'e' | 'E') && matches!(chars.get(i + 1), Some('+' | '-'));
                i += if exponent { 2 } else { 1 };
            }
            out.push(Tok::Num);
        } else if is_ident_start(c) && c != ':' {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if let Some(p) = PUNCT
            .iter()
            .find(|p| chars[i..].starts_with(&p.chars().collect::<Vec<_>>()))
        {
            out.push(Tok::Punct(p));
            i += p.len();
        } else {
            bail!("unexpected {c:?} at {i} in {expr:?}");
        }
    }
    Ok(out)
}

/// A quoted string starting at `start`; returns its content and the index after it.
fn string(chars: &[char], start: usize) -> Option<(String, usize)> {
    let quote = chars[start];
    let (mut s, mut i) = (String::new(), start + 1);
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => {
                s.push(*chars.get(i + 1)?);
                i += 2;
            }
            c if c == quote => return Some((s, i + 1)),
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
    None
}

/// The names an expression uses.
#[derive(Debug, Default, PartialEq)]
pub struct Names {
    /// Metric (sample) names of selectors.
    pub metrics: BTreeSet<String>,
    /// (metric, label) of each label matcher; the metric is empty for a selector without one.
    pub matchers: BTreeSet<(String, String)>,
    /// Labels of grouping clauses (`by`, `without`, `on`, `ignoring`, `group_left`, ...).
    pub grouping: BTreeSet<String>,
}

/// The names `expr` uses.
pub fn names(expr: &str) -> Result<Names> {
    let toks = tokens(expr)?;
    let mut names = Names::default();
    let mut i = 0;
    while i < toks.len() {
        let next_is_paren = toks.get(i + 1) == Some(&Tok::Punct("("));
        match &toks[i] {
            Tok::Ident(id) if GROUPING.contains(&id.as_str()) && next_is_paren => {
                i += 2;
                while i < toks.len() && toks[i] != Tok::Punct(")") {
                    if let Tok::Ident(label) = &toks[i] {
                        names.grouping.insert(label.clone());
                    }
                    i += 1;
                }
            }
            Tok::Ident(_) if next_is_paren => {} // a function or an aggregation
            Tok::Ident(id)
                if KEYWORDS.contains(&id.to_ascii_lowercase().as_str())
                    || GROUPING.contains(&id.as_str())
                    || AGGREGATIONS.contains(&id.as_str()) => {}
            Tok::Ident(id) => {
                names.metrics.insert(id.clone());
                if toks.get(i + 1) == Some(&Tok::Punct(LBRACE)) {
                    i = selector(&toks, i + 1, id, &mut names)?;
                }
            }
            Tok::Punct(LBRACE) => i = selector(&toks, i, "", &mut names)?,
            _ => {}
        }
        i += 1;
    }
    Ok(names)
}

/// The matchers of the selector whose `{` is at `open`; returns the index of its `}`.
fn selector(toks: &[Tok], open: usize, metric: &str, names: &mut Names) -> Result<usize> {
    let mut metric = metric.to_string();
    let mut labels = Vec::new();
    let mut i = open + 1;
    while i < toks.len() && toks[i] != Tok::Punct(RBRACE) {
        let op_follows = matches!(toks.get(i + 1), Some(Tok::Punct("=" | "!=" | "=~" | "!~")));
        match &toks[i] {
            Tok::Ident(label) | Tok::Str(label) if op_follows => {
                if label == "__name__" {
                    if let Some(Tok::Str(name)) = toks.get(i + 2) {
                        metric = name.clone();
                    }
                } else {
                    labels.push(label.clone());
                }
                i += 2; // the operator; the value follows
            }
            Tok::Str(name) if metric.is_empty() => metric = name.clone(),
            Tok::Str(_) | Tok::Var | Tok::Punct(",") => {}
            other => bail!("unexpected {other:?} in a selector"),
        }
        i += 1;
    }
    if i >= toks.len() {
        bail!("unclosed selector");
    }
    if !metric.is_empty() {
        names.metrics.insert(metric.clone());
    }
    for label in labels {
        names.matchers.insert((metric.clone(), label));
    }
    Ok(i)
}

/// What a `/metrics` page exports: each sample name with the labels seen on it, and each family
/// declared by `# TYPE` (registered even before its first sample).
#[derive(Debug, Default)]
pub struct Exported {
    /// Sample name → labels seen (an empty set for a declared family without samples yet).
    pub samples: BTreeMap<String, BTreeSet<String>>,
    /// Sample names declared by `# TYPE` lines that have no sample on the page.
    pub without_samples: BTreeSet<String>,
}

/// Parses the text exposition format (Prometheus or OpenMetrics).
pub fn exported(text: &str) -> Exported {
    let mut declared = BTreeSet::new();
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(family), Some(kind)) = (parts.next(), parts.next()) {
                declared.extend(sample_names(family, kind));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find([LBRACE_CHAR, ' ']).unwrap_or(line.len());
            let labels = samples.entry(line[..end].to_string()).or_default();
            if line[end..].starts_with(LBRACE_CHAR) {
                labels.extend(label_names(&line[end + 1..]));
            }
        }
    }
    let without_samples = declared.iter().filter(|d| !samples.contains_key(*d)).cloned().collect();
    for d in &declared {
        samples.entry(d.clone()).or_default();
    }
    Exported {
        samples,
        without_samples,
    }
}

/// The sample names of a family of `kind`.
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    let with = |suffixes: &[&str]| suffixes.iter().map(|s| format!("{family}{s}")).collect();
    match kind {
        "counter" if family.ends_with("_total") => vec![family.to_string()],
        "counter" => with(&["_total", "_created"]),
        "histogram" | "gaugehistogram" => with(&["_bucket", "_sum", "_count", "_created"]),
        "summary" => with(&["", "_sum", "_count", "_created"]),
        _ => vec![family.to_string()],
    }
}

/// The label names of a sample's `name="value",...}` part (values may hold `,`, `}` and escapes).
fn label_names(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let (mut out, mut i) = (Vec::new(), 0);
    loop {
        while i < chars.len() && matches!(chars[i], ',' | ' ') {
            i += 1;
        }
        if i >= chars.len() || chars[i] == RBRACE_CHAR {
            return out;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' {
            i += 1;
        }
        out.push(chars[start..i].iter().collect::<String>().trim().to_string());
        match string(&chars, i + 1) {
            Some((_, next)) if chars.get(i + 1) == Some(&'"') => i = next,
            _ => return out,
        }
    }
}

/// Problems with the names `expr` uses: metrics `exported` lacks, labels no metric of the
/// expression carries. `extra_labels` are labels the expression's output must also have (an
/// alert's `$labels.x`). `up` and the target labels come from Prometheus.
pub fn dangling(exported: &Exported, expr: &str, extra_labels: &[String]) -> Result<Vec<String>> {
    let names = names(expr)?;
    let mut problems = Vec::new();
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for metric in &names.metrics {
        if SCRAPE_METRICS.contains(&metric.as_str()) {
            continue;
        }
        match exported.samples.get(metric) {
            None => problems.push(format!("metric {metric} is not exported")),
            Some(_) if exported.without_samples.contains(metric) => problems.push(format!(
                "metric {metric} is declared but has no sample, so its labels cannot be checked"
            )),
            Some(labels) => available.extend(labels.iter().cloned()),
        }
    }
    for (metric, label) in &names.matchers {
        if TARGET_LABELS.contains(&label.as_str()) {
            continue;
        }
        if metric.is_empty() || SCRAPE_METRICS.contains(&metric.as_str()) {
            if !available.contains(label) {
                problems.push(format!("label {label} is on no metric of the expression"));
            }
        } else if let Some(own) = exported.samples.get(metric)
            && !own.contains(label)
            && !exported.without_samples.contains(metric)
        {
            problems.push(format!("label {label} is not exported on {metric}"));
        }
    }
    for label in names.grouping.iter().chain(extra_labels) {
        if !available.contains(label) {
            problems.push(format!("label {label} is on no metric of the expression"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_selectors_groupings_and_functions() {
        let n = names(
            r#"sum by (category) (rate(a_total{job="x", category=~"k.*"}[5m:1m])) / ignoring (category) group_left
               sum(rate(b_total{ job = "x" }[$__rate_interval] offset 5m)) > 0.1 and on() absent(up{job="y"} == 1)
               or histogram_quantile(0.99, sum by (le) (rate(c_bucket{policy=~"$policy"}[${__range}])))"#,
        )
        .expect("parses");
        let metrics: Vec<&str> = n.metrics.iter().map(String::as_str).collect();
        assert_eq!(metrics, ["a_total", "b_total", "c_bucket", "up"]);
        assert!(n.matchers.contains(&("a_total".into(), "category".into())));
        assert!(n.matchers.contains(&("c_bucket".into(), "policy".into())));
        let grouping: Vec<&str> = n.grouping.iter().map(String::as_str).collect();
        assert_eq!(grouping, ["category", "le"]);
        let quoted = names(r#"{"x_total", state="a"} + {__name__="y", z="1"}"#).expect("parses");
        assert!(quoted.matchers.contains(&("x_total".into(), "state".into())));
        assert!(quoted.matchers.contains(&("y".into(), "z".into())));
    }

    #[test]
    fn exported_names_and_labels() {
        let text = "# HELP m_reconcile Reconciles.\n# TYPE m_reconcile counter\nm_reconcile_total{result=\"a,b}\\\"\",x=\"1\"} 3\n\
                    # TYPE m_time_seconds histogram\nm_time_seconds_bucket{le=\"0.1\"} 1\nm_time_seconds_sum 0.2\n\
                    # TYPE m_throttled counter\n# TYPE m_leader gauge\nm_leader 1\n# EOF\n";
        let e = exported(text);
        let labels: Vec<&str> = e.samples["m_reconcile_total"].iter().map(String::as_str).collect();
        assert_eq!(labels, ["result", "x"]);
        assert!(e.samples["m_time_seconds_bucket"].contains("le"));
        assert!(e.without_samples.contains("m_throttled_total"));
        assert!(!e.without_samples.contains("m_leader"));
        let problems = dangling(
            &e,
            "sum by (result) (rate(m_reconcile_total{y=\"1\"}[5m])) + m_nope",
            &[],
        )
        .expect("parses");
        assert_eq!(
            problems,
            [
                "metric m_nope is not exported",
                "label y is not exported on m_reconcile_total"
            ]
        );
        let problems = dangling(&e, "rate(m_throttled_total[5m])", &["policy".into()]).expect("parses");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
