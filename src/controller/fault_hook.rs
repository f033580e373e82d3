//! A fault hook for the end-to-end tests of panic containment: when the environment variable
//! `IMDS_OPERATOR_FAULT_PANIC_POLICY` names a policy, every reconcile of that policy panics.
//! Unset (always, outside those tests) it does nothing. It lives in the binary because the
//! tests run the binary users run.

use std::sync::OnceLock;

/// The variable's name.
pub const PANIC_POLICY_ENV: &str = "IMDS_OPERATOR_FAULT_PANIC_POLICY";

fn panicking_policy() -> Option<&'static str> {
    static POLICY: OnceLock<Option<String>> = OnceLock::new();
    POLICY
        .get_or_init(|| std::env::var(PANIC_POLICY_ENV).ok().filter(|p| !p.is_empty()))
        .as_deref()
}

/// Panics when the hook names `policy`.
pub fn maybe_panic(policy: &str) {
    if panicking_policy() == Some(policy) {
        panic!("{PANIC_POLICY_ENV} names this policy (an injected fault)");
    }
}
