//! Node → EC2 instance, through the Node's `spec.providerID` (`aws:///<zone>/<instance-id>`).

use crate::reason::Reason;
use std::fmt;

/// An EC2 instance a Node runs on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceRef {
    /// The availability zone from the providerID (may be empty in older IDs).
    pub zone: String,
    /// `i-` followed by 8 or 17 hex digits.
    pub instance_id: String,
}

/// Why a Node cannot be mapped to an EC2 instance. None of these is an error of the operator:
/// such nodes are counted as skipped, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The kubelet (or cloud controller) has not set `spec.providerID` yet; the node is
    /// retried when it appears.
    #[error("the node has no spec.providerID yet")]
    NoProviderId,
    /// The providerID belongs to another provider (`gce://…`, `kind://…`).
    #[error("providerID {0:?} is not an AWS providerID")]
    NotAws(String),
    /// EKS Fargate nodes have no EC2 instance the account can modify.
    #[error("providerID {0:?} is a Fargate node")]
    Fargate(String),
    /// `aws://` but not a recognisable instance.
    #[error("providerID {id:?} is malformed: {why}")]
    Malformed {
        /// The providerID as found.
        id: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// DescribeInstances does not know the instance (terminated or in another account/region).
    #[error("instance {0} was not found in EC2 (terminated, or in another account or region)")]
    InstanceNotFound(String),
}

impl SkipReason {
    /// The reason used in status and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            SkipReason::NoProviderId => Reason::NoProviderId,
            SkipReason::NotAws(_) => Reason::NotAws,
            SkipReason::Fargate(_) => Reason::Fargate,
            SkipReason::Malformed { .. } => Reason::MalformedProviderId,
            SkipReason::InstanceNotFound(_) => Reason::InstanceNotFound,
        }
    }
}

impl fmt::Display for InstanceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.instance_id)
    }
}

/// True when `id` looks like an EC2 instance ID (`i-` + 8 or 17 lowercase hex digits).
pub fn is_instance_id(id: &str) -> bool {
    match id.strip_prefix("i-") {
        Some(hex) => {
            (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

/// Parses a Node's providerID.
///
/// Accepted: `aws:///us-east-1a/i-0123456789abcdef0`, `aws://us-east-1a/i-…` (two slashes, seen
/// on some self-managed clusters), `aws:///i-…` (no zone). Fargate IDs
/// (`aws:///<zone>/<hash>/fargate-ip-…`) and anything else are reported with a reason.
pub fn parse(provider_id: Option<&str>) -> Result<InstanceRef, SkipReason> {
    let raw = match provider_id.map(str::trim) {
        None | Some("") => return Err(SkipReason::NoProviderId),
        Some(raw) => raw,
    };
    let Some(rest) = raw.strip_prefix("aws://") else {
        return Err(SkipReason::NotAws(raw.to_string()));
    };
    let rest = rest.trim_start_matches('/');
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| s.starts_with("fargate-")) {
        return Err(SkipReason::Fargate(raw.to_string()));
    }
    let malformed = |why| SkipReason::Malformed {
        id: raw.to_string(),
        why,
    };
    let (zone, instance_id) = match segments.as_slice() {
        [id] => ("", *id),
        [zone, id] => (*zone, *id),
        [] => return Err(malformed("no instance ID")),
        _ => return Err(malformed("too many path segments")),
    };
    if !is_instance_id(instance_id) {
        return Err(malformed("the last segment is not an EC2 instance ID"));
    }
    Ok(InstanceRef {
        zone: zone.to_string(),
        instance_id: instance_id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids() {
        let ok = |zone: &str, id: &str| {
            Ok(InstanceRef {
                zone: zone.into(),
                instance_id: id.into(),
            })
        };
        let cases: Vec<(Option<&str>, Result<InstanceRef, &str>)> = vec![
            (
                Some("aws:///us-east-1a/i-0123456789abcdef0"),
                ok("us-east-1a", "i-0123456789abcdef0"),
            ),
            (
                Some("aws://us-west-2b/i-0123456789abcdef0"),
                ok("us-west-2b", "i-0123456789abcdef0"),
            ),
            (Some("aws:///i-1234abcd"), ok("", "i-1234abcd")),
            (Some(" aws:///eu-west-1c/i-1234abcd "), ok("eu-west-1c", "i-1234abcd")),
            (None, Err("NoProviderID")),
            (Some(""), Err("NoProviderID")),
            (Some("gce://project/zone/vm"), Err("NotAWS")),
            (Some("kind://docker/kind/kind-worker"), Err("NotAWS")),
            (
                Some("aws:///us-east-1a/0123456789abcdef/fargate-ip-10-0-1-2.ec2.internal"),
                Err("Fargate"),
            ),
            (Some("aws:///"), Err("MalformedProviderID")),
            (Some("aws:///us-east-1a/not-an-instance"), Err("MalformedProviderID")),
            (Some("aws:///us-east-1a/i-XYZ"), Err("MalformedProviderID")),
            (
                Some("aws:///us-east-1a/i-0123456789ABCDEF0"),
                Err("MalformedProviderID"),
            ),
            (Some("aws:///a/b/i-1234abcd"), Err("MalformedProviderID")),
        ];
        for (input, want) in cases {
            let got = parse(input).map_err(|e| e.reason().as_str());
            assert_eq!(got, want, "providerID {input:?}");
        }
    }

    #[test]
    fn instance_id_shapes() {
        assert!(is_instance_id("i-1234abcd"));
        assert!(is_instance_id("i-0123456789abcdef0"));
        assert!(!is_instance_id("i-123"));
        assert!(!is_instance_id("ami-1234abcd"));
        assert!(!is_instance_id("i-0123456789abcdef0/"));
    }
}
