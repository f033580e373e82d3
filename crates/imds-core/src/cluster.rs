//! The cluster's name as its instances carry it: EKS managed node groups, eksctl, Karpenter and
//! kops tag every instance of a cluster `kubernetes.io/cluster/<name>` (`owned` or `shared`). The
//! IAM policy scopes writes by that tag; the EC2 adaptor can list the cluster's instances by it.

use thiserror::Error;

/// Prefix of the tag that marks an instance as belonging to a Kubernetes cluster.
pub const CLUSTER_TAG_PREFIX: &str = "kubernetes.io/cluster/";

/// Longest accepted cluster name. EKS allows 100 characters; the resulting tag key
/// (`kubernetes.io/cluster/` + name) must also stay within EC2's 128-character tag-key limit.
pub const MAX_CLUSTER_NAME_LEN: usize = 100;

/// Why a name cannot be a cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterNameError {
    /// The name is empty.
    #[error("the cluster name must not be empty")]
    Empty,
    /// The name cannot be part of a `kubernetes.io/cluster/<name>` tag key.
    #[error("invalid cluster name {name:?}: {reason}")]
    Invalid {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks that `name` is a cluster name (EKS: letters, digits, `-`, `_`; kops: DNS names).
pub fn validate_cluster_name(name: &str) -> Result<(), ClusterNameError> {
    let invalid = |reason: &str| ClusterNameError::Invalid {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(ClusterNameError::Empty);
    }
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(invalid(&format!("longer than {MAX_CLUSTER_NAME_LEN} characters")));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(&format!(
            "character {c:?} is not allowed (letters, digits, '-', '_' and '.' only)"
        )));
    }
    Ok(())
}

/// The tag key marking the instances of cluster `name`: `kubernetes.io/cluster/<name>`.
pub fn cluster_tag_key(name: &str) -> String {
    format!("{CLUSTER_TAG_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        assert_eq!(validate_cluster_name(""), Err(ClusterNameError::Empty));
        for bad in ["-prod", "prod cluster", "prod/x", "prod*", "pröd", &"a".repeat(101)] {
            let err = validate_cluster_name(bad).unwrap_err();
            assert!(matches!(err, ClusterNameError::Invalid { .. }), "{bad:?}: {err}");
        }
        for good in ["prod", "Prod_1", "k8s.example.com", "a", &"a".repeat(100)] {
            validate_cluster_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        assert_eq!(cluster_tag_key("prod"), "kubernetes.io/cluster/prod");
        assert!(cluster_tag_key(&"a".repeat(MAX_CLUSTER_NAME_LEN)).len() <= 128);
    }
}
