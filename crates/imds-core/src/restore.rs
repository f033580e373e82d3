//! Restore-on-delete, pure: what one instance needs when the `Restore` policy that changed it
//! goes away — its recorded original options merged under what the remaining policies decide.

use crate::observation::Observation;
use crate::options::{ApplyState, Field, FullOptions, ObservedOptions};
use crate::selection::{self, PolicyInput};

/// What restore does with one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreAction {
    /// Nothing: the instance is gone, was never read, or has no record of its original options.
    Skip,
    /// Not now: retried, with why.
    Wait(String),
    /// Take this step.
    Step(RestoreStep),
}

/// Decides for one instance: `observation` is what EC2 said of it, `original` the recorded
/// options (when there is a record), `remaining` the policies still selecting its node.
pub fn restore_action(
    observation: Option<&Observation>,
    original: Option<&FullOptions>,
    remaining: &[&PolicyInput],
) -> RestoreAction {
    let current = match observation {
        Some(Observation::Found(o)) => o,
        Some(Observation::NotFound) | None => return RestoreAction::Skip,
        Some(Observation::Failed(f)) => return RestoreAction::Wait(f.message.clone()),
    };
    let Some(original) = original else {
        return RestoreAction::Skip;
    };
    if current.state == ApplyState::Pending {
        return RestoreAction::Wait("a change is pending; restoring after it applied".into());
    }
    RestoreAction::Step(restore_step(original, current, remaining))
}

/// What to do for one instance when its policy goes away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreStep {
    /// Send this request (`None`: the instance already has these options).
    pub modify: Option<FullOptions>,
    /// Remove the original-options tag (no remaining policy manages the instance).
    pub forget_original: bool,
}

/// Pure: the original options under what the remaining policies (those still selecting the
/// node) enforce; the tag stays while any remaining policy enforces something, so that policy's
/// own deletion can restore later.
pub fn restore_step(original: &FullOptions, observed: &ObservedOptions, remaining: &[&PolicyInput]) -> RestoreStep {
    let decisions = selection::decide(remaining.iter().copied());
    let enforced = selection::enforced_options(&decisions);
    let target = FullOptions::merge(&enforced, &original.to_options());
    let current = FullOptions::completed(&observed.values);
    let complete = Field::ALL.iter().all(|f| observed.values.get(*f).is_some());
    RestoreStep {
        modify: (current != target || !complete).then_some(target),
        forget_original: enforced == Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpTokens, MetadataOptions, PolicyMode};
    use crate::fixtures::{hop, policy, tokens};
    use crate::observation::{Failure, FailureKind};

    fn original() -> FullOptions {
        FullOptions::EC2_LAUNCH_DEFAULTS
    }

    fn observed(t: HttpTokens, h: i32) -> ObservedOptions {
        ObservedOptions {
            values: FullOptions {
                http_tokens: t,
                hop_limit: h,
                ..original()
            }
            .to_options(),
            state: ApplyState::Applied,
        }
    }

    #[test]
    fn restore_steps() {
        let other_tokens = policy("other", 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
        let audit = policy("audit", 0, PolicyMode::Audit, hop(3));
        struct Case<'a> {
            name: &'a str,
            observed: ObservedOptions,
            remaining: Vec<&'a PolicyInput>,
            want: RestoreStep,
        }
        let cases = vec![
            Case {
                name: "nothing remains: original back, tag removed",
                observed: observed(HttpTokens::Required, 2),
                remaining: vec![],
                want: RestoreStep {
                    modify: Some(original()),
                    forget_original: true,
                },
            },
            Case {
                name: "already original",
                observed: observed(HttpTokens::Optional, 1),
                remaining: vec![],
                want: RestoreStep {
                    modify: None,
                    forget_original: true,
                },
            },
            Case {
                name: "another policy still requires tokens: only the hop limit goes back",
                observed: observed(HttpTokens::Required, 2),
                remaining: vec![&other_tokens],
                want: RestoreStep {
                    modify: Some(FullOptions {
                        http_tokens: HttpTokens::Required,
                        ..original()
                    }),
                    forget_original: false,
                },
            },
            Case {
                name: "an audit policy enforces nothing",
                observed: observed(HttpTokens::Required, 2),
                remaining: vec![&audit],
                want: RestoreStep {
                    modify: Some(original()),
                    forget_original: true,
                },
            },
        ];
        for c in cases {
            assert_eq!(
                restore_step(&original(), &c.observed, &c.remaining),
                c.want,
                "{}",
                c.name
            );
        }
        let _ = MetadataOptions::default();
    }

    #[test]
    fn restore_actions() {
        let failed = Observation::Failed(Failure {
            kind: FailureKind::Transient,
            message: "RequestLimitExceeded: slow down".into(),
        });
        let found = Observation::Found(observed(HttpTokens::Required, 2));
        let mut pending_options = observed(HttpTokens::Required, 2);
        pending_options.state = ApplyState::Pending;
        let pending = Observation::Found(pending_options);
        let o = original();
        let cases: Vec<(&str, Option<&Observation>, Option<&FullOptions>, RestoreAction)> = vec![
            ("never read", None, Some(&o), RestoreAction::Skip),
            ("gone", Some(&Observation::NotFound), Some(&o), RestoreAction::Skip),
            ("no record", Some(&found), None, RestoreAction::Skip),
            (
                "read failed: retried",
                Some(&failed),
                Some(&o),
                RestoreAction::Wait("RequestLimitExceeded: slow down".into()),
            ),
            (
                "pending: after it applied",
                Some(&pending),
                Some(&o),
                RestoreAction::Wait("a change is pending; restoring after it applied".into()),
            ),
            (
                "found with a record",
                Some(&found),
                Some(&o),
                RestoreAction::Step(RestoreStep {
                    modify: Some(original()),
                    forget_original: true,
                }),
            ),
        ];
        for (name, observation, original, want) in cases {
            assert_eq!(restore_action(observation, original, &[]), want, "{name}");
        }
    }
}
