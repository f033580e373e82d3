//! What a node leaves on the machine and how it goes: the kubelet's cgroup root (cgroup v1, one
//! directory per hierarchy), containerd's shims (which outlive containerd) and their sockets in
//! `/run/containerd/s`, mounts under the node's dir (container root filesystems, sandbox
//! `/dev/shm`, the kubelet's volume tmpfs), and the kubelet's paths it does not let one move
//! (`/var/log/containers` links, `/var/lib/kubelet/device-plugins/kubelet.sock`).
//! Every loop here is bounded; every process killed is found by what makes it this node's (its
//! cgroup, or the node's containerd socket on its command line), never by a name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A cgroup root of the node's own (`cgroupRoot` of the kubelet) in every v1 hierarchy, so
/// that two kubelets never see (and clean up) each other's pod cgroups.
#[derive(Debug)]
pub(super) struct CgroupRoot {
    name: String,
    dirs: Vec<PathBuf>,
}

/// The v1 hierarchies: directories of /sys/fs/cgroup with a `cgroup.procs` (the `cpu,cpuacct`
/// style symlinks are skipped, their targets are listed).
fn hierarchies() -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(CGROUP_MOUNT).with_context(|| format!("reading {CGROUP_MOUNT}"))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && entry.path().join("cgroup.procs").is_file() {
            out.push(entry.path());
        }
    }
    anyhow::ensure!(!out.is_empty(), "no cgroup v1 hierarchies under {CGROUP_MOUNT}");
    Ok(out)
}

impl CgroupRoot {
    /// Creates `/<name>` in every hierarchy (cpuset gets its parent's CPUs and memory nodes, or
    /// no process could join it).
    pub(super) fn create(name: &str) -> Result<CgroupRoot> {
        let mut root = CgroupRoot {
            name: format!("/{name}"),
            dirs: Vec::new(),
        };
        for hierarchy in hierarchies()? {
            let dir = hierarchy.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            root.dirs.push(dir.clone());
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                    std::fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("writing {}", dir.join(file).display()))?;
                }
            }
        }
        Ok(root)
    }

    /// The kubelet's `cgroupRoot`.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// SIGKILLs every process in the root's subtree (the pods' processes), waits for them to
    /// go, and removes the cgroups, deepest first; again while the root is still there (a
    /// runtime may create a child meanwhile), up to a deadline. Errors are reported, not
    /// returned.
    pub(super) fn remove(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for dir in std::mem::take(&mut self.dirs) {
            while dir.exists() {
                let last_try = Instant::now() >= deadline;
                remove_subtree(&dir, deadline, last_try);
                if last_try {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One pass over a cgroup subtree, deepest first: kill its members (until none is left or the
/// deadline passes), remove it. Reports failures only when `report`.
fn remove_subtree(dir: &Path, deadline: Instant, report: bool) {
    let mut cgroups = subtree(dir);
    cgroups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for cgroup in &cgroups {
        while kill_members(cgroup) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        match std::fs::remove_dir(cgroup) {
            // runc removes a container's cgroups itself when its process is gone.
            Err(e) if report && e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("warning: could not remove cgroup {}: {e}", cgroup.display());
            }
            _ => {}
        }
    }
}

/// What a killed test process (SIGKILL: no drop ran) left of its nodes: its pods and their
/// cgroups (`imds-e2e-<pid>-<node>` of a pid that is gone), the shims and mounts of its node
/// dirs. Runs once per process, before the first node's dir is made (the harness then removes
/// stale dirs, which must hold no mounts by then).
pub(super) fn sweep_stale() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        for dir in crate::stale_temp_dirs("node") {
            kill_shims(&dir.join("containerd.sock"));
            remove_host_leftovers(&dir);
            unmount_under(&dir);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("warning: could not remove stale {}: {e}", dir.display());
            }
        }
        let Ok(hierarchies) = hierarchies() else {
            return;
        };
        for hierarchy in hierarchies {
            let Ok(entries) = std::fs::read_dir(&hierarchy) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.strip_prefix("imds-e2e-").and_then(|r| r.split('-').next());
                if let Some(pid) = owner.and_then(|p| p.parse::<u32>().ok())
                    && pid != std::process::id()
                    && !crate::process::pid_alive(pid)
                {
                    let mut stale = CgroupRoot {
                        name,
                        dirs: vec![entry.path()],
                    };
                    stale.remove();
                }
            }
        }
    });
}

/// `dir` and every cgroup below it.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            todo.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
        out.push(d);
    }
    out
}

/// SIGKILLs the processes of one cgroup (never this test process); returns how many there were.
fn kill_members(cgroup: &Path) -> usize {
    let me = std::process::id();
    let pids: Vec<u32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| pid != me)
        .collect();
    for &pid in &pids {
        // SAFETY: a plain kill of a process found in the node's own cgroup.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    pids.len()
}

/// SIGKILLs containerd's shims of the node: the processes whose command line names its socket
/// (`containerd-shim-runc-v2 ... -address <socket>`). Returns how many.
pub(super) fn kill_shims(socket: &Path) -> usize {
    let needle = socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let mut args = cmdline.split(|&b| b == 0);
        let program = args.next().unwrap_or_default();
        let is_shim = program.windows(15).any(|w| w == b"containerd-shim") && args.any(|arg| arg == needle);
        if is_shim && pid != std::process::id() {
            // SAFETY: a plain kill of a shim of this node's containerd.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            killed += 1;
        }
    }
    killed
}

/// containerd 1.6's shim sockets: `/run/containerd/s/<sha256 of "<socket>/<namespace>/<id>">`.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// Paths the kubelet does not take from its root dir.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
const DEVICE_PLUGIN_SOCKET: &str = "/var/lib/kubelet/device-plugins/kubelet.sock";

/// Removes what the node's processes left outside its dir (after they are gone): the shims'
/// sockets (of every task whose state is under `dir`), the container log links into `dir`, the
/// kubelet's device-plugin socket; then those directories if they are empty. Best effort.
pub(super) fn remove_host_leftovers(dir: &Path) {
    let socket = dir.join("containerd.sock");
    let tasks = dir
        .join("containerd/state/io.containerd.runtime.v2.task")
        .join(super::containerd::K8S_NAMESPACE);
    for task in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        let key = format!(
            "{}/{}/{}",
            socket.display(),
            super::containerd::K8S_NAMESPACE,
            task.file_name().to_string_lossy()
        );
        if let Some(hex) = sha256_hex(&key) {
            let _ = std::fs::remove_file(Path::new(SHIM_SOCKET_DIR).join(hex));
        }
    }
    for link in std::fs::read_dir(CONTAINER_LOG_LINKS).into_iter().flatten().flatten() {
        if std::fs::read_link(link.path()).is_ok_and(|target| target.starts_with(dir)) {
            let _ = std::fs::remove_file(link.path());
        }
    }
    let _ = std::fs::remove_file(DEVICE_PLUGIN_SOCKET);
    // Only empty ones go (remove_dir refuses the others).
    for empty in [
        SHIM_SOCKET_DIR,
        "/run/containerd",
        CONTAINER_LOG_LINKS,
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet",
    ] {
        let _ = std::fs::remove_dir(empty);
    }
}

/// `sha256sum` of a string, as lowercase hex.
fn sha256_hex(text: &str) -> Option<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .to_string();
    (out.status.success() && hex.len() == 64).then_some(hex)
}

/// Unmounts (lazily) every mount at or below `dir`, deepest first.
pub(super) fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2 of a path under the node's own dir.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "warning: could not unmount {}: {}",
                point.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}
