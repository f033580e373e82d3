//! The region's account-level IMDS defaults, read at most once per refresh period (default 5
//! minutes) for every policy together — never per reconcile per policy. A failed read (an IAM
//! policy without `ec2:GetInstanceMetadataDefaults`, say) leaves them unknown until the next
//! period: policies then show no account-defaults report and refusals are classified as before.

use crate::aws::ec2::Ec2;
use imds_core::defaults::AccountDefaults;
use imds_core::observation::Failure;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The default refresh period.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct State {
    /// When the last read was made, and what it gave.
    read: Option<(Instant, Result<AccountDefaults, Failure>)>,
    /// The last defaults read successfully.
    last: Option<AccountDefaults>,
    /// Grows each time the defaults read differ from the ones before.
    revision: u64,
}

/// The cached account defaults, shared by every reconcile (the lock is held across a read, so
/// concurrent reconciles wait for one read instead of sending several).
#[derive(Debug)]
pub struct AccountDefaultsCache {
    state: Mutex<State>,
    refresh: Duration,
}

/// The defaults as last known, and their revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// `None`: never read successfully.
    pub defaults: Option<AccountDefaults>,
    /// Changes whenever the defaults change (see [`AccountDefaultsCache::get`]).
    pub revision: u64,
}

impl AccountDefaultsCache {
    /// A cache that reads at most once per `refresh`.
    pub fn new(refresh: Duration) -> AccountDefaultsCache {
        AccountDefaultsCache {
            state: Mutex::new(State::default()),
            refresh,
        }
    }

    /// The defaults, read from EC2 first when never read or read more than the refresh period
    /// ago.
    pub async fn get(&self, ec2: &Ec2) -> Known {
        let mut state = self.state.lock().await;
        let fresh = state.read.as_ref().is_some_and(|(at, _)| at.elapsed() < self.refresh);
        if !fresh {
            let result = ec2.get_defaults().await.map_err(|e| e.to_failure());
            store(&mut state, result);
        }
        Known {
            defaults: state.last.clone(),
            revision: state.revision,
        }
    }

    /// Reads the defaults now, whatever the cache holds (the singleton's reconcile).
    pub async fn refresh(&self, ec2: &Ec2) -> Result<AccountDefaults, Failure> {
        let mut state = self.state.lock().await;
        let result = ec2.get_defaults().await.map_err(|e| e.to_failure());
        store(&mut state, result.clone());
        result
    }
}

/// Records a read; a failed one keeps the last known defaults.
fn store(state: &mut State, result: Result<AccountDefaults, Failure>) {
    match &result {
        Ok(defaults) => {
            if state.last.as_ref() != Some(defaults) {
                state.revision += 1;
                state.last = Some(defaults.clone());
            }
        }
        Err(failure) => {
            let first = !matches!(state.read, Some((_, Err(_))));
            if first {
                tracing::warn!(error = %failure.message, "reading the account's IMDS defaults failed (ec2:GetInstanceMetadataDefaults); retried in the next refresh period");
            }
        }
    }
    state.read = Some((Instant::now(), result));
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_core::api::HttpTokens;
    use imds_core::observation::FailureKind;

    #[test]
    fn revision_moves_only_when_the_defaults_change() {
        let mut state = State::default();
        let a = AccountDefaults::default();
        store(&mut state, Ok(a.clone()));
        assert_eq!(state.revision, 1);
        store(&mut state, Ok(a.clone()));
        assert_eq!(state.revision, 1, "the same defaults again");
        let failure = Failure {
            kind: FailureKind::PermissionDenied,
            message: "UnauthorizedOperation: no".into(),
        };
        store(&mut state, Err(failure));
        assert_eq!(state.revision, 1);
        assert_eq!(state.last, Some(a), "a failed read keeps the last defaults");
        let b = AccountDefaults {
            http_tokens: Some(HttpTokens::Required),
            ..AccountDefaults::default()
        };
        store(&mut state, Ok(b));
        assert_eq!(state.revision, 2);
    }
}
