//! Guards: checks a planned request must pass before it may be sent. The tag-key guard (EC2
//! refuses `instanceMetadataTags: enabled` on an instance with a tag key containing `/` or a
//! space) and the IMDSv1-usage guard (`MetadataNoToken` over a lookback). Pure: the facts are
//! read by the caller and handed in.

use crate::api::{GuardMode, HttpTokens, Toggle};
use crate::observation::Failure;
use crate::options::{FullOptions, ObservedOptions};
use crate::reason::Reason;
use crate::selection::PolicyInput;
use crate::usage::UsageSeries;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The lookback used when a policy's lookback cannot be parsed (the API's default).
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// The boot window used when a policy's `ignoreAfterLaunch` cannot be parsed (the API's default).
pub const DEFAULT_BOOT_WINDOW: Duration = Duration::from_secs(600);

/// Where planning reads an instance's [`GuardFacts`]: only for an instance it plans a request
/// for (in a quiet fleet, none), so the caller need not gather them for every instance.
pub trait GuardFactsSource {
    /// The facts of `instance_id` (none known: the default).
    fn facts_of(&self, instance_id: &str) -> GuardFacts;
}

impl GuardFactsSource for std::collections::HashMap<String, GuardFacts> {
    fn facts_of(&self, instance_id: &str) -> GuardFacts {
        self.get(instance_id).cloned().unwrap_or_default()
    }
}

/// No facts known of any instance.
pub struct NoGuardFacts;

impl GuardFactsSource for NoGuardFacts {
    fn facts_of(&self, _instance_id: &str) -> GuardFacts {
        GuardFacts::default()
    }
}

/// What the guards know about one instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuardFacts {
    /// The instance's tag keys.
    pub tag_keys: Vec<String>,
    /// `MetadataNoToken` per period over a lookback (the key), or why it could not be read; a
    /// lookback absent here has not been read yet.
    pub imdsv1_calls: BTreeMap<Duration, Result<UsageSeries, Failure>>,
    /// When the instance was launched (DescribeInstances' `LaunchTime`), when known.
    pub launched: Option<Timestamp>,
}

/// The IMDSv1-usage guard that applies to one `httpTokens` decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Imdsv1Guard {
    /// The strictest mode among the policies that own the decision.
    pub mode: GuardMode,
    /// The longest lookback among those that check.
    pub lookback: Duration,
    /// The shortest boot window (`ignoreAfterLaunch`) among those that check.
    pub boot_window: Duration,
}

/// A guard's objection that does not stop the request (`imdsv1Usage: Warn`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardWarning {
    /// What the guard saw.
    pub message: String,
}

impl fmt::Display for GuardWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}", self.message)
    }
}

/// What the guards say of one planned request.
#[derive(Clone, Debug, PartialEq)]
pub enum GuardVerdict {
    /// Send it.
    Allow,
    /// Send it, and report the warning.
    Warn(GuardWarning),
    /// Do not send it.
    Block {
        /// The guard's reason.
        reason: Reason,
        /// What to do about it.
        message: String,
    },
    /// `MetadataNoToken` over this lookback must be read first.
    NeedsUsage(Duration),
}

/// The IMDSv1 guard of the policies that own the `httpTokens` decision: the strictest mode, and
/// the longest lookback among those that check.
pub fn imdsv1_guard<'a>(owners: impl IntoIterator<Item = &'a PolicyInput>) -> Imdsv1Guard {
    let rank = |m: GuardMode| match m {
        GuardMode::Block => 2,
        GuardMode::Warn => 1,
        GuardMode::Off => 0,
    };
    let mut mode = GuardMode::Off;
    let mut lookback: Option<Duration> = None;
    let mut boot_window: Option<Duration> = None;
    for guard in owners.into_iter().map(|p| &p.guards.imdsv1_usage) {
        if rank(guard.mode) > rank(mode) {
            mode = guard.mode;
        }
        if guard.mode != GuardMode::Off {
            lookback = lookback.max(Some(parse_lookback(&guard.lookback)));
            let window = humantime::parse_duration(&guard.ignore_after_launch).unwrap_or(DEFAULT_BOOT_WINDOW);
            boot_window = Some(boot_window.map_or(window, |w| w.min(window)));
        }
    }
    Imdsv1Guard {
        mode,
        lookback: lookback.unwrap_or(DEFAULT_LOOKBACK),
        boot_window: boot_window.unwrap_or(DEFAULT_BOOT_WINDOW),
    }
}

/// A lookback such as `24h`; the default (24h) when it cannot be parsed.
pub fn parse_lookback(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or(DEFAULT_LOOKBACK)
}

/// Whether IMDS can serve a tag with this key as an instance metadata tag: EC2 refuses to
/// enable instance metadata tags while any tag key contains `/` or a space.
pub fn servable_tag_key(key: &str) -> bool {
    !key.contains('/') && !key.contains(' ')
}

/// Checks `request` for an instance currently at `observed`: the tag-key guard first (a
/// request EC2 would refuse), then the IMDSv1-usage guard when the request turns IMDSv1 off.
pub fn check(
    request: &FullOptions,
    observed: &ObservedOptions,
    imdsv1: Imdsv1Guard,
    facts: &GuardFacts,
) -> GuardVerdict {
    if request.instance_metadata_tags == Toggle::Enabled
        && observed.values.instance_metadata_tags != Some(Toggle::Enabled)
        && let Some(key) = facts.tag_keys.iter().find(|k| !servable_tag_key(k))
    {
        return GuardVerdict::Block {
            reason: Reason::TagKeyNotAllowed,
            message: format!(
                "EC2 refuses instanceMetadataTags: enabled on instances with a tag key containing '/' or a space; this instance has {key:?}"
            ),
        };
    }
    let turns_imdsv1_off =
        request.http_tokens == HttpTokens::Required && observed.values.http_tokens != Some(HttpTokens::Required);
    if !turns_imdsv1_off || imdsv1.mode == GuardMode::Off {
        return GuardVerdict::Allow;
    }
    let objection = match facts.imdsv1_calls.get(&imdsv1.lookback) {
        None => return GuardVerdict::NeedsUsage(imdsv1.lookback),
        Some(Ok(series)) if series.after_boot(facts.launched, imdsv1.boot_window) > 0.0 => {
            let calls = series.after_boot(facts.launched, imdsv1.boot_window);
            let hours = imdsv1.lookback.as_secs_f64() / 3600.0;
            let after_boot = match facts.launched {
                Some(_) => format!(
                    " (after the first {} since launch)",
                    humantime::format_duration(imdsv1.boot_window)
                ),
                None => String::new(),
            };
            let message = format!(
                "{calls} IMDSv1 calls (CloudWatch MetadataNoToken) in the last {hours}h{after_boot}; move those callers to IMDSv2 first"
            );
            (Reason::Imdsv1InUse, message)
        }
        Some(Ok(_)) => return GuardVerdict::Allow,
        Some(Err(error)) => (
            Reason::Imdsv1UsageUnknown,
            format!("cannot read MetadataNoToken: {}", error.message),
        ),
    };
    match imdsv1.mode {
        GuardMode::Block => GuardVerdict::Block {
            reason: objection.0,
            message: objection.1,
        },
        _ => GuardVerdict::Warn(GuardWarning { message: objection.1 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PolicyMode;
    use crate::fixtures::{policy, tokens};
    use crate::observation::FailureKind;
    use crate::options::ApplyState;

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    /// A complete request (or observed set): EC2's launch defaults with these tokens and tags.
    fn opts(tokens: HttpTokens, tags: Toggle) -> FullOptions {
        FullOptions {
            http_tokens: tokens,
            instance_metadata_tags: tags,
            ..FullOptions::EC2_LAUNCH_DEFAULTS
        }
    }

    fn seen(tokens: HttpTokens, tags: Toggle) -> ObservedOptions {
        ObservedOptions {
            values: opts(tokens, tags).to_options(),
            state: ApplyState::Applied,
        }
    }

    fn guard(mode: GuardMode, lookback: Duration) -> Imdsv1Guard {
        Imdsv1Guard {
            mode,
            lookback,
            boot_window: DEFAULT_BOOT_WINDOW,
        }
    }

    /// Facts with one sum per lookback (one period) and no launch time: every call counts.
    fn facts(tag_keys: &[&str], calls: &[(Duration, Result<f64, Failure>)]) -> GuardFacts {
        GuardFacts {
            tag_keys: tag_keys.iter().map(|k| k.to_string()).collect(),
            imdsv1_calls: calls
                .iter()
                .map(|(lookback, c)| (*lookback, c.clone().map(|c| UsageSeries::single(300, 0, c))))
                .collect(),
            launched: None,
        }
    }

    fn unreadable() -> Result<f64, Failure> {
        Err(Failure {
            kind: FailureKind::PermissionDenied,
            message: "AccessDenied: cloudwatch:GetMetricData".into(),
        })
    }

    /// A verdict without its message, to compare in tables.
    #[derive(Debug, PartialEq)]
    enum Got {
        Allow,
        Warn,
        Block(Reason),
        NeedsUsage(Duration),
    }

    fn split(verdict: &GuardVerdict) -> (Got, Option<String>) {
        match verdict {
            GuardVerdict::Allow => (Got::Allow, None),
            GuardVerdict::Warn(w) => (Got::Warn, Some(w.message.clone())),
            GuardVerdict::Block { reason, message } => (Got::Block(*reason), Some(message.clone())),
            GuardVerdict::NeedsUsage(lookback) => (Got::NeedsUsage(*lookback), None),
        }
    }

    /// The boot window: calls only in an instance's first minutes do not block; calls after
    /// them do; without a launch time every call counts.
    #[test]
    fn boot_noise_does_not_block_but_later_calls_do() {
        let launch = 1_800_000_000_i64; // on a 5-minute boundary
        let launched = Timestamp::from_second(launch).ok();
        let day = hours(24);
        let series = |points: &[(i64, f64)]| UsageSeries {
            period_secs: 300,
            points: points.to_vec(),
        };
        // (points after launch in seconds, launch known, verdict is a block)
        type Case = (Vec<(i64, f64)>, bool, bool, &'static str);
        let cases: Vec<Case> = vec![
            (vec![(0, 4.0), (300, 1.0)], true, false, "the VPC CNI's first start"),
            (vec![(0, 4.0), (900, 1.0)], true, true, "a caller after 15 minutes"),
            (vec![(0, 4.0)], false, true, "launch time unknown"),
        ];
        for (points, known, blocks, why) in cases {
            let facts = GuardFacts {
                tag_keys: Vec::new(),
                imdsv1_calls: [(
                    day,
                    Ok(series(
                        &points.iter().map(|(t, c)| (launch + t, *c)).collect::<Vec<_>>(),
                    )),
                )]
                .into(),
                launched: if known { launched } else { None },
            };
            let request = opts(HttpTokens::Required, Toggle::Disabled);
            let verdict = check(
                &request,
                &seen(HttpTokens::Optional, Toggle::Disabled),
                guard(GuardMode::Block, day),
                &facts,
            );
            match verdict {
                GuardVerdict::Block { reason, message } => {
                    assert!(blocks, "{why}: blocked: {message}");
                    assert_eq!(reason, Reason::Imdsv1InUse, "{why}");
                    if known {
                        assert!(
                            message.contains("1 IMDSv1 calls") && message.contains("after the first 10m since launch"),
                            "{why}: {message}"
                        );
                    }
                }
                GuardVerdict::Allow => assert!(!blocks, "{why}: allowed"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn check_verdicts() {
        use GuardMode::{Block, Off, Warn};
        use HttpTokens::{Optional, Required};
        use Toggle::{Disabled, Enabled};
        struct Case {
            name: &'static str,
            request: FullOptions,
            observed: ObservedOptions,
            imdsv1: Imdsv1Guard,
            facts: GuardFacts,
            want: Got,
            /// What the message (or the warning's) must name.
            mentions: &'static [&'static str],
        }
        let day = hours(24);
        let case = |name, request, observed, imdsv1, facts, want, mentions| Case {
            name,
            request,
            observed,
            imdsv1,
            facts,
            want,
            mentions,
        };
        // Requests that only enable tags (tokens already required), and ones that only turn IMDSv1 off.
        let tags_on = opts(Required, Enabled);
        let tags_off_seen = seen(Required, Disabled);
        let v2 = opts(Required, Disabled);
        let v1_seen = seen(Optional, Disabled);
        let cases = vec![
            // The tag-key guard.
            case(
                "tag key with a slash blocks enabling tags",
                tags_on,
                tags_off_seen.clone(),
                guard(Off, day),
                facts(&["Name", "team/owner"], &[]),
                Got::Block(Reason::TagKeyNotAllowed),
                &["\"team/owner\""],
            ),
            case(
                "tag key with a space blocks enabling tags",
                tags_on,
                tags_off_seen.clone(),
                guard(Off, day),
                facts(&["cost center"], &[]),
                Got::Block(Reason::TagKeyNotAllowed),
                &["\"cost center\""],
            ),
            case(
                "fine tag keys allow enabling tags",
                tags_on,
                tags_off_seen.clone(),
                guard(Off, day),
                facts(&["Name", "team-owner", "kubernetes.io_cluster", "a.b:c"], &[]),
                Got::Allow,
                &[],
            ),
            case(
                "no tags at all allow enabling tags",
                tags_on,
                tags_off_seen.clone(),
                guard(Off, day),
                facts(&[], &[]),
                Got::Allow,
                &[],
            ),
            case(
                "tags already enabled on the instance: keys not checked",
                tags_on,
                seen(Required, Enabled),
                guard(Off, day),
                facts(&["team/owner"], &[]),
                Got::Allow,
                &[],
            ),
            case(
                "tags observed unset count as not enabled",
                tags_on,
                ObservedOptions {
                    values: crate::api::MetadataOptions {
                        instance_metadata_tags: None,
                        ..tags_off_seen.values.clone()
                    },
                    state: ApplyState::Applied,
                },
                guard(Off, day),
                facts(&["team/owner"], &[]),
                Got::Block(Reason::TagKeyNotAllowed),
                &["\"team/owner\""],
            ),
            case(
                "request leaves tags disabled: keys not checked",
                v2,
                v1_seen.clone(),
                guard(Off, day),
                facts(&["team/owner"], &[]),
                Got::Allow,
                &[],
            ),
            case(
                "tag-key guard comes before the IMDSv1 guard",
                opts(Required, Enabled),
                v1_seen.clone(),
                guard(Block, day),
                facts(&["team/owner"], &[(day, Ok(3.0))]),
                Got::Block(Reason::TagKeyNotAllowed),
                &["\"team/owner\""],
            ),
            // The IMDSv1-usage guard.
            case(
                "block: calls in the lookback",
                v2,
                v1_seen.clone(),
                guard(Block, day),
                facts(&[], &[(day, Ok(3.0))]),
                Got::Block(Reason::Imdsv1InUse),
                &["3 IMDSv1 calls", "last 24h"],
            ),
            case(
                "warn: calls in the lookback",
                v2,
                v1_seen.clone(),
                guard(Warn, day),
                facts(&[], &[(day, Ok(3.0))]),
                Got::Warn,
                &["3 IMDSv1 calls", "last 24h"],
            ),
            case(
                "off: calls are not looked at",
                v2,
                v1_seen.clone(),
                guard(Off, day),
                facts(&[], &[(day, Ok(3.0))]),
                Got::Allow,
                &[],
            ),
            case(
                "block: no calls",
                v2,
                v1_seen.clone(),
                guard(Block, day),
                facts(&[], &[(day, Ok(0.0))]),
                Got::Allow,
                &[],
            ),
            case(
                "warn: no calls",
                v2,
                v1_seen.clone(),
                guard(Warn, day),
                facts(&[], &[(day, Ok(0.0))]),
                Got::Allow,
                &[],
            ),
            case(
                "block: usage not read yet",
                v2,
                v1_seen.clone(),
                guard(Block, day),
                facts(&[], &[]),
                Got::NeedsUsage(day),
                &[],
            ),
            case(
                "warn: usage not read yet",
                v2,
                v1_seen.clone(),
                guard(Warn, hours(72)),
                facts(&[], &[]),
                Got::NeedsUsage(hours(72)),
                &[],
            ),
            case(
                "off: usage not needed",
                v2,
                v1_seen.clone(),
                guard(Off, day),
                facts(&[], &[]),
                Got::Allow,
                &[],
            ),
            case(
                "block: usage unreadable",
                v2,
                v1_seen.clone(),
                guard(Block, day),
                facts(&[], &[(day, unreadable())]),
                Got::Block(Reason::Imdsv1UsageUnknown),
                &["AccessDenied: cloudwatch:GetMetricData"],
            ),
            case(
                "warn: usage unreadable",
                v2,
                v1_seen.clone(),
                guard(Warn, day),
                facts(&[], &[(day, unreadable())]),
                Got::Warn,
                &["AccessDenied: cloudwatch:GetMetricData"],
            ),
            case(
                "off: usage unreadable does not matter",
                v2,
                v1_seen.clone(),
                guard(Off, day),
                facts(&[], &[(day, unreadable())]),
                Got::Allow,
                &[],
            ),
            case(
                "observed tokens unset count as IMDSv1 on",
                v2,
                ObservedOptions::default(),
                guard(Block, day),
                facts(&[], &[(day, Ok(1.0))]),
                Got::Block(Reason::Imdsv1InUse),
                &["1 IMDSv1 calls"],
            ),
            // Requests that do not turn IMDSv1 off.
            case(
                "already required: calls do not matter",
                v2,
                seen(Required, Disabled),
                guard(Block, day),
                facts(&[], &[(day, Ok(3.0))]),
                Got::Allow,
                &[],
            ),
            case(
                "already required: usage not needed",
                v2,
                seen(Required, Disabled),
                guard(Block, day),
                facts(&[], &[]),
                Got::Allow,
                &[],
            ),
            case(
                "request optional: calls do not matter",
                opts(Optional, Disabled),
                v1_seen.clone(),
                guard(Block, day),
                facts(&[], &[(day, Ok(3.0))]),
                Got::Allow,
                &[],
            ),
            case(
                "request optional turning IMDSv1 back on: usage not needed",
                opts(Optional, Disabled),
                seen(Required, Disabled),
                guard(Block, day),
                facts(&[], &[(day, unreadable())]),
                Got::Allow,
                &[],
            ),
            // Only the guard's lookback counts.
            case(
                "calls in 1h, none in the guard's 24h",
                v2,
                v1_seen.clone(),
                guard(Block, day),
                facts(&[], &[(hours(1), Ok(5.0)), (day, Ok(0.0))]),
                Got::Allow,
                &[],
            ),
            case(
                "calls in the guard's 1h, none in 24h",
                v2,
                v1_seen.clone(),
                guard(Block, hours(1)),
                facts(&[], &[(hours(1), Ok(2.0)), (day, Ok(0.0))]),
                Got::Block(Reason::Imdsv1InUse),
                &["2 IMDSv1 calls", "last 1h"],
            ),
            case(
                "other lookbacks read, not the guard's",
                v2,
                v1_seen.clone(),
                guard(Warn, hours(72)),
                facts(&[], &[(hours(1), Ok(0.0)), (day, Ok(0.0))]),
                Got::NeedsUsage(hours(72)),
                &[],
            ),
            case(
                "another lookback unreadable, the guard's fine",
                v2,
                v1_seen.clone(),
                guard(Block, day),
                facts(&[], &[(hours(1), unreadable()), (day, Ok(0.0))]),
                Got::Allow,
                &[],
            ),
            case(
                "a lookback of 90m is named in hours",
                v2,
                v1_seen.clone(),
                guard(Warn, Duration::from_secs(5400)),
                facts(&[], &[(Duration::from_secs(5400), Ok(7.0))]),
                Got::Warn,
                &["7 IMDSv1 calls", "last 1.5h"],
            ),
        ];
        for Case {
            name,
            request,
            observed,
            imdsv1,
            facts,
            want,
            mentions,
        } in cases
        {
            let verdict = check(&request, &observed, imdsv1, &facts);
            let (got, message) = split(&verdict);
            assert_eq!(got, want, "{name}");
            let message = message.unwrap_or_default();
            for m in mentions {
                assert!(message.contains(m), "{name}: {message:?} should name {m:?}");
            }
            if let GuardVerdict::Warn(warning) = &verdict {
                let shown = warning.to_string();
                assert!(shown.starts_with("warning: "), "{name}: {shown:?}");
                assert_eq!(shown, format!("warning: {}", warning.message), "{name}");
            }
        }
    }

    fn owner(name: &str, mode: GuardMode, lookback: &str) -> PolicyInput {
        let mut p = policy(name, 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
        p.guards.imdsv1_usage.mode = mode;
        p.guards.imdsv1_usage.lookback = lookback.into();
        p
    }

    #[test]
    fn imdsv1_guard_of_owners() {
        use GuardMode::{Block, Off, Warn};
        let cases: Vec<(&str, Vec<PolicyInput>, Imdsv1Guard)> = vec![
            ("no owners: off, default lookback", vec![], guard(Off, hours(24))),
            (
                "fixture default: off",
                vec![policy("a", 0, PolicyMode::Enforce, tokens(HttpTokens::Required))],
                guard(Off, hours(24)),
            ),
            (
                "one off owner: its lookback is ignored",
                vec![owner("a", Off, "72h")],
                guard(Off, hours(24)),
            ),
            (
                "all off: default lookback",
                vec![owner("a", Off, "1h"), owner("b", Off, "336h")],
                guard(Off, hours(24)),
            ),
            (
                "one block owner",
                vec![owner("a", Block, "72h")],
                guard(Block, hours(72)),
            ),
            ("one warn owner", vec![owner("a", Warn, "1h")], guard(Warn, hours(1))),
            (
                "block beats warn",
                vec![owner("a", Warn, "24h"), owner("b", Block, "24h")],
                guard(Block, hours(24)),
            ),
            (
                "block beats warn in any order",
                vec![owner("a", Block, "24h"), owner("b", Warn, "24h")],
                guard(Block, hours(24)),
            ),
            (
                "warn beats off",
                vec![owner("a", Off, "24h"), owner("b", Warn, "24h")],
                guard(Warn, hours(24)),
            ),
            (
                "block beats off",
                vec![owner("a", Block, "24h"), owner("b", Off, "24h")],
                guard(Block, hours(24)),
            ),
            (
                "longest lookback among those that check",
                vec![owner("a", Block, "1h"), owner("b", Warn, "72h")],
                guard(Block, hours(72)),
            ),
            (
                "longest lookback in any order",
                vec![
                    owner("a", Warn, "72h"),
                    owner("b", Block, "1h"),
                    owner("c", Block, "48h"),
                ],
                guard(Block, hours(72)),
            ),
            (
                "an off owner's longer lookback does not count",
                vec![owner("a", Block, "1h"), owner("b", Off, "336h")],
                guard(Block, hours(1)),
            ),
            (
                "unparsable lookback counts as 24h",
                vec![owner("a", Warn, "a while")],
                guard(Warn, hours(24)),
            ),
            (
                "unparsable lookback (24h) beats a shorter one",
                vec![owner("a", Block, "1h"), owner("b", Warn, "bogus")],
                guard(Block, hours(24)),
            ),
            (
                "unparsable lookback (24h) loses to a longer one",
                vec![owner("a", Block, "48h"), owner("b", Warn, "bogus")],
                guard(Block, hours(48)),
            ),
        ];
        for (name, owners, want) in cases {
            let got = imdsv1_guard(&owners);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn lookbacks() {
        let cases = [
            ("24h", hours(24)),
            ("1h", hours(1)),
            ("72h", hours(72)),
            ("336h", hours(336)),
            ("90m", Duration::from_secs(5400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5h", Duration::from_secs(5400)),
            ("3600s", hours(1)),
            ("", DEFAULT_LOOKBACK),
            ("soon", DEFAULT_LOOKBACK),
            ("-1h", DEFAULT_LOOKBACK),
            ("24", DEFAULT_LOOKBACK),
        ];
        assert_eq!(DEFAULT_LOOKBACK, hours(24));
        for (text, want) in cases {
            let got = parse_lookback(text);
            assert_eq!(got, want, "{text:?}");
        }
    }
}
