//! Test support for imds-operator (dev-only, never published): a real local Kubernetes control
//! plane (etcd + kube-apiserver), a moto server standing in for EC2 and CloudWatch, an in-process
//! EC2 double for what moto cannot model, the end-to-end helpers, and the process plumbing they
//! share.
//!
//! - [`control_plane`]: [`ControlPlane`], etcd and kube-apiserver on free loopback ports.
//! - [`moto`]: [`Moto`], a moto server for the EC2 and CloudWatch APIs.
//! - [`ec2_double`]: [`Ec2Double`], an EC2 Query-protocol double (see `docs/ec2-semantics.md`).
//! - [`e2e`]: a cluster with the CRD installed, the operator binary, waiting for outcomes.
//! - [`node`]: real nodes (kubelet + containerd in a network namespace of the test's) and the
//!   controller-manager and scheduler, for `make test-node`.
//! - [`nodes`]: realistic EKS worker Nodes ([`nodes::EksFleet`]) and their bulk creation.
//! - [`process`]: child processes that never outlive the test process.
//! - [`procstat`]: a process's memory and CPU time from `/proc` (for the benchmarks).
//! - [`tcp_proxy`]: [`TcpProxy`], a loopback TCP forwarder that can reset or hang its
//!   connections (network partitions between the operator and the API server).
//!
//! The integration tests and examples of imds-operator use it as a dev-dependency. It depends on
//! `imds-core` for the API types, never on `imds-operator` (which dev-depends on it).
//!
//! Binaries come from `hack/build-control-plane.sh` and `hack/setup-moto.sh` (both cached under
//! [`cache_dir`]). Several control planes and moto servers can run at once in one process: each
//! has its own temp dir and ports.

pub mod control_plane;
pub mod e2e;
pub mod ec2_double;
pub mod moto;
pub mod node;
pub mod nodes;
pub mod observability;
pub mod oci;
pub mod process;
pub mod procstat;
pub mod registry;
pub mod runc;
pub mod tcp_proxy;

pub use control_plane::ControlPlane;
pub use ec2_double::Ec2Double;
pub use moto::Moto;
pub use tcp_proxy::{ProxyMode, TcpProxy};

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

/// Installs rustls' process-wide crypto provider (ring), which kube's client needs because both
/// ring and aws-lc-rs end up linked (the AWS SDK brings the latter). Idempotent; called by every
/// harness entry point that may build a kube client.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The repository root (where the workspace's Cargo.toml is): two levels above this crate.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.ancestors().nth(2).unwrap_or(manifest_dir).to_path_buf()
}

/// `$IMDS_OPERATOR_CACHE`, else `$XDG_CACHE_HOME/imds-operator`, else
/// `$HOME/.cache/imds-operator`, as in the hack/ scripts.
pub fn cache_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("IMDS_OPERATOR_CACHE") {
        return PathBuf::from(dir);
    }
    let base = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(non_empty("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("imds-operator")
}

/// All `KEY=value` pairs of hack/versions.env.
pub fn pinned_versions() -> Result<BTreeMap<String, String>> {
    let path = repo_root().join("hack/versions.env");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            (k.trim().to_string(), v.to_string())
        })
        .collect())
}

/// One pinned version from hack/versions.env, e.g. `pinned_version("KUBE_VERSION")`.
pub fn pinned_version(key: &str) -> Result<String> {
    pinned_versions()?
        .remove(key)
        .with_context(|| format!("{key} is not set in hack/versions.env"))
}

/// Ports handed out in this process, never handed out twice (the kernel may otherwise give a
/// just-released port to the next caller before its owner binds it).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// `n` distinct free TCP ports on 127.0.0.1. They are free when returned; a process that binds
/// them later may still lose a race with another program, so startups retry on "address in use".
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..(n * 50 + 50) {
        if ports.len() == n {
            break;
        }
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a free port")?;
        let port = l.local_addr()?.port();
        if handed.insert(port) {
            ports.push(port);
        }
        held.push(l); // keep all bound until done so that the kernel gives distinct ports
    }
    anyhow::ensure!(ports.len() == n, "could not find {n} free ports");
    Ok(ports)
}

/// One free TCP port on 127.0.0.1 (see [`free_ports`]).
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// Whether a log says that a listener could not bind (lost race for a port).
pub(crate) fn is_port_conflict(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("address in use")
}

/// Whether to keep temp dirs (env `IMDS_OPERATOR_KEEP_TMP` set and not `0`/empty).
pub fn keep_tmp() -> bool {
    std::env::var("IMDS_OPERATOR_KEEP_TMP").is_ok_and(|v| !v.is_empty() && v != "0")
}

const TEMP_PREFIX: &str = "imds-operator-";
/// File in each harness temp dir naming the pid of the process that owns it.
const OWNER_FILE: &str = ".owner-pid";

/// A temp dir for one harness component: `$TMPDIR/imds-operator-<what>-XXXXXX`, marked with
/// the owning pid. The first call in a process also removes such dirs left behind by test
/// processes that were killed before they could clean up (a control plane's is ~120 MB).
pub fn temp_dir(what: &str) -> Result<tempfile::TempDir> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_stale_temp_dirs);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{what}-"))
        .tempdir()
        .context("creating a temp dir")?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
    Ok(dir)
}

/// Harness temp dirs (`$TMPDIR/imds-operator-<what>-*`) whose owning test process is gone.
pub(crate) fn stale_temp_dirs(what: &str) -> Vec<PathBuf> {
    let prefix = format!("{TEMP_PREFIX}{what}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| {
            let owner = std::fs::read_to_string(e.path().join(OWNER_FILE)).unwrap_or_default();
            owner
                .trim()
                .parse::<u32>()
                .is_ok_and(|pid| pid != std::process::id() && !process::pid_alive(pid))
        })
        .map(|e| e.path())
        .collect()
}

fn sweep_stale_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Nodes' dirs may hold mounts: `node` sweeps them itself, unmounting first.
        if !name.starts_with(TEMP_PREFIX) || name.starts_with(&format!("{TEMP_PREFIX}node-")) {
            continue;
        }
        // Dirs without an owner file (kept on purpose, or not ours) are left alone.
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE));
        if let Ok(pid) = owner.unwrap_or_default().trim().parse::<u32>()
            && pid != std::process::id()
            && !process::pid_alive(pid)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes (or, with `IMDS_OPERATOR_KEEP_TMP`, keeps and reports) a harness temp dir.
pub fn finish_temp_dir(dir: tempfile::TempDir) {
    if keep_tmp() {
        let _ = std::fs::remove_file(dir.path().join(OWNER_FILE));
        let path = dir.keep();
        eprintln!("IMDS_OPERATOR_KEEP_TMP: kept {}", path.display());
    } else if let Err(e) = dir.close() {
        eprintln!("warning: could not remove a harness temp dir: {e}");
    }
}
