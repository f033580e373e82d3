//! Running the operator's image under `runc` the way a kubelet would run the chart's pod: the
//! container spec of a rendered Deployment (args, env, user, read-only root, capabilities,
//! seccomp `RuntimeDefault`, ports, probes) mapped onto an OCI runtime bundle unpacked from the
//! image, plus the service account volume a pod gets.
//!
//! Host network (the local API server and moto listen on loopback); the other namespaces (pid,
//! mount, ipc, uts) are the container's own. Needs root and `runc` on `PATH`.

use crate::process::{ChildGuard, run_checked};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// The default profile of containers-common, the one Podman, CRI-O and Docker apply as their
/// runtime default (containerd's RuntimeDefault is generated from the same list).
pub const DEFAULT_SECCOMP_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// Capabilities a container runtime grants by default (containerd's and CRI-O's list).
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The pod a container belongs to (what the downward API and the service account volume name).
#[derive(Debug, Clone)]
pub struct PodIdentity {
    /// Pod name (also the hostname).
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
}

/// What a kubelet would run for the first container of a Deployment's pod template.
#[derive(Debug, Clone)]
pub struct PodContainer {
    /// The process: the image entrypoint (or `command`) and the container's `args`.
    pub args: Vec<String>,
    /// `KEY=value` pairs: the image's, the kubelet's (service env), then the container's.
    pub env: Vec<String>,
    /// uid, gid and supplementary groups (fsGroup, supplementalGroups).
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// Capabilities left after `drop` and `add`.
    pub capabilities: Vec<String>,
    /// The seccomp profile (`RuntimeDefault` converted to the OCI format), if any.
    pub seccomp: Option<Value>,
    /// Named container ports.
    pub ports: Vec<(String, u16)>,
    /// `(probe kind, path, port)` of the httpGet probes (`livenessProbe`, `readinessProbe`, ...).
    pub http_probes: Vec<(String, String, u16)>,
    /// The pod's service account.
    pub service_account: String,
}

/// The pod template's first container of a rendered `Deployment`, resolved against the image
/// config like a kubelet does; `service_env` is what the kubelet adds (`KUBERNETES_SERVICE_*`).
pub fn pod_container(
    deployment: &Value,
    image_config: &Value,
    pod: &PodIdentity,
    service_env: &[(String, String)],
) -> Result<PodContainer> {
    let spec = &deployment["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    ensure!(c.is_object(), "the Deployment has no container");
    let (psc, sc) = (&spec["securityContext"], &c["securityContext"]);
    let image = &image_config["config"];
    let mut args = if c["command"].is_array() {
        strings(&c["command"])
    } else {
        strings(&image["Entrypoint"])
    };
    args.extend(if c["args"].is_array() || c["command"].is_array() {
        strings(&c["args"])
    } else {
        strings(&image["Cmd"])
    });
    let mut env = strings(&image["Env"]);
    env.push(format!("HOSTNAME={}", pod.name));
    env.extend(service_env.iter().map(|(k, v)| format!("{k}={v}")));
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env without name")?;
        env.push(format!("{name}={}", env_value(e, pod, spec)?));
    }
    let (uid, gid, additional_gids) = identity(psc, sc, image)?;
    let capabilities = capabilities(sc);
    let profile = if sc["seccompProfile"].is_object() {
        &sc["seccompProfile"]
    } else {
        &psc["seccompProfile"]
    };
    let seccomp = match profile["type"].as_str() {
        Some("RuntimeDefault") => Some(runtime_default_seccomp(&capabilities)?),
        None | Some("Unconfined") => None,
        Some(other) => bail!("seccompProfile type {other} is not supported here"),
    };
    let (ports, http_probes) = ports_and_probes(c)?;
    Ok(PodContainer {
        args,
        env,
        uid,
        gid,
        additional_gids,
        read_only_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
        no_new_privileges: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
        capabilities,
        seccomp,
        ports,
        http_probes,
        service_account: spec["serviceAccountName"].as_str().unwrap_or("default").to_string(),
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// uid, gid and supplementary gids from the container's and the pod's security contexts, else
/// the image's user; refuses uid 0 under `runAsNonRoot` as the kubelet does.
fn identity(psc: &Value, sc: &Value, image: &Value) -> Result<(u32, u32, Vec<u32>)> {
    let (image_uid, image_gid) = image_user(image["User"].as_str().unwrap_or_default())?;
    let field = |k: &str| sc[k].as_u64().or(psc[k].as_u64());
    let uid = field("runAsUser").map_or(image_uid, |u| u as u32);
    let gid = field("runAsGroup").map_or(image_gid, |g| g as u32);
    if sc["runAsNonRoot"].as_bool().or(psc["runAsNonRoot"].as_bool()) == Some(true) {
        ensure!(uid != 0, "runAsNonRoot is set but the container would run as uid 0");
    }
    let mut gids: Vec<u32> = psc["fsGroup"].as_u64().into_iter().map(|g| g as u32).collect();
    let supplemental = psc["supplementalGroups"].as_array().into_iter().flatten();
    gids.extend(supplemental.filter_map(Value::as_u64).map(|g| g as u32));
    Ok((uid, gid, gids))
}

/// The runtime's default capabilities less `drop` (`ALL` drops every one), plus `add`.
fn capabilities(sc: &Value) -> Vec<String> {
    let drop = strings(&sc["capabilities"]["drop"]);
    let mut caps: Vec<String> = if drop.iter().any(|d| d == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .filter(|cap| !drop.iter().any(|d| cap.strip_prefix("CAP_") == Some(d.as_str())))
            .map(|s| s.to_string())
            .collect()
    };
    caps.extend(
        strings(&sc["capabilities"]["add"])
            .into_iter()
            .map(|a| format!("CAP_{a}")),
    );
    caps
}

/// Named container ports and the httpGet probes with their ports resolved.
#[allow(clippy::type_complexity)]
fn ports_and_probes(c: &Value) -> Result<(Vec<(String, u16)>, Vec<(String, String, u16)>)> {
    let ports: Vec<(String, u16)> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["containerPort"].as_u64()? as u16)))
        .collect();
    let mut probes = Vec::new();
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &c[kind]["httpGet"];
        let Some(path) = get["path"].as_str() else {
            continue;
        };
        let port = match &get["port"] {
            Value::Number(n) => n.as_u64().context("probe port")? as u16,
            Value::String(name) => ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|p| p.1)
                .with_context(|| format!("{kind} names unknown port {name}"))?,
            other => bail!("{kind} port {other}"),
        };
        probes.push((kind.to_string(), path.to_string(), port));
    }
    Ok((ports, probes))
}

/// The value of one EnvVar: `value`, or the downward API fields a kubelet fills in.
fn env_value(e: &Value, pod: &PodIdentity, spec: &Value) -> Result<String> {
    if let Some(v) = e["value"].as_str() {
        return Ok(v.to_string());
    }
    match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
        Some("metadata.name") => Ok(pod.name.clone()),
        Some("metadata.namespace") => Ok(pod.namespace.clone()),
        Some("spec.serviceAccountName") => Ok(spec["serviceAccountName"].as_str().unwrap_or("default").to_string()),
        Some("spec.nodeName") => Ok("localhost".to_string()),
        _ if e["value"].is_null() && e["valueFrom"].is_null() => Ok(String::new()),
        _ => bail!("env {} uses a source not supported here: {}", e["name"], e["valueFrom"]),
    }
}

/// `uid[:gid]` of an image config's `User` (numeric only: the image has no passwd lookups).
fn image_user(user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Ok((
        u.parse().with_context(|| format!("image user {user} is not numeric"))?,
        g.parse()
            .with_context(|| format!("image group {user} is not numeric"))?,
    ))
}

/// [`DEFAULT_SECCOMP_PROFILE`] converted to the OCI runtime format for this architecture and
/// the container's `capabilities` (rules that depend on a capability are applied the way Podman
/// applies them).
pub fn runtime_default_seccomp(capabilities: &[String]) -> Result<Value> {
    let text = std::fs::read_to_string(DEFAULT_SECCOMP_PROFILE).with_context(|| {
        format!("reading {DEFAULT_SECCOMP_PROFILE} (apt-get install -y golang-github-containers-common)")
    })?;
    let profile: Value = serde_json::from_str(&text)?;
    let (go_arch, scmp_arch) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        other => bail!("no seccomp architecture for {other}"),
    };
    let mut architectures = vec![json!(scmp_arch)];
    for arch in profile["archMap"].as_array().into_iter().flatten() {
        if arch["architecture"] == scmp_arch {
            architectures.extend(arch["subArchitectures"].as_array().cloned().unwrap_or_default());
        }
    }
    let has = |list: &Value, want: &str| list.as_array().into_iter().flatten().any(|v| v == want);
    let has_cap = |list: &Value| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|c| capabilities.iter().any(|have| c == have.as_str()))
    };
    let mut syscalls = Vec::new();
    for rule in profile["syscalls"].as_array().context("profile without syscalls")? {
        let (inc, exc) = (&rule["includes"], &rule["excludes"]);
        let arch_ok = (inc["arches"].is_null() || has(&inc["arches"], go_arch)) && !has(&exc["arches"], go_arch);
        let caps_ok = (inc["caps"].is_null() || has_cap(&inc["caps"])) && !has_cap(&exc["caps"]);
        if !(arch_ok && caps_ok) {
            continue;
        }
        let mut out = json!({"names": rule["names"], "action": rule["action"]});
        if rule["args"].as_array().is_some_and(|a| !a.is_empty()) {
            out["args"] = rule["args"].clone();
        }
        if let Some(errno) = rule["errnoRet"].as_u64() {
            out["errnoRet"] = json!(errno);
        }
        syscalls.push(out);
    }
    Ok(json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"].as_u64().unwrap_or(1),
        "architectures": architectures,
        "syscalls": syscalls,
    }))
}

/// The service account volume of a pod: `token`, `ca.crt`, `namespace`, readable by the pod's
/// fsGroup (0640, group `fs_group`) like the kubelet's projected volume.
pub fn write_service_account_volume(
    dir: &Path,
    token: &str,
    ca_pem: &[u8],
    namespace: &str,
    fs_group: Option<u32>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for (name, content) in [
        ("token", token.as_bytes()),
        ("ca.crt", ca_pem),
        ("namespace", namespace.as_bytes()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content)?;
        let mode = if fs_group.is_some() { 0o640 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = fs_group {
            std::os::unix::fs::chown(&path, Some(0), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
        }
    }
    Ok(())
}

/// A read-only bind mount into the container.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// Path on the host.
    pub source: PathBuf,
    /// Path in the container.
    pub destination: String,
}

/// Rewrites `<bundle>/config.json` (as `umoci unpack` wrote it) for `container`: process, user,
/// capabilities, seccomp, read-only root, host network, `mounts`, hostname.
pub fn configure_bundle(bundle: &Path, container: &PodContainer, mounts: &[BindMount], hostname: &str) -> Result<()> {
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let caps = json!(container.capabilities);
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(container.args);
    config["process"]["env"] = json!(container.env);
    config["process"]["user"] =
        json!({"uid": container.uid, "gid": container.gid, "additionalGids": container.additional_gids});
    config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []});
    config["process"]["noNewPrivileges"] = json!(container.no_new_privileges);
    config["root"]["readonly"] = json!(container.read_only_root);
    config["hostname"] = json!(hostname);
    let namespaces = config["linux"]["namespaces"].as_array().cloned().unwrap_or_default();
    config["linux"]["namespaces"] = json!(
        namespaces
            .into_iter()
            .filter(|n| n["type"] != "network")
            .collect::<Vec<_>>()
    );
    match &container.seccomp {
        Some(profile) => config["linux"]["seccomp"] = profile.clone(),
        None => {
            if let Some(linux) = config["linux"].as_object_mut() {
                linux.remove("seccomp");
            }
        }
    }
    let list = config["mounts"].as_array_mut().context("config.json without mounts")?;
    for m in mounts {
        list.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// A container run by `runc run` in the foreground (its output goes to `<log_dir>/<id>.log`);
/// killed and deleted on drop.
pub struct Container {
    id: String,
    state: PathBuf,
    child: ChildGuard,
}

impl Container {
    /// `runc --root <bundle>/../runc-state run --bundle <bundle> <id>`.
    pub fn run(bundle: &Path, id: &str, log_dir: &Path) -> Result<Container> {
        let state = bundle.parent().context("bundle without parent")?.join("runc-state");
        std::fs::create_dir_all(&state)?;
        let mut cmd = Command::new("runc");
        cmd.arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id);
        let child = ChildGuard::spawn(id, cmd, log_dir).context("runc run (apt-get install -y runc)")?;
        Ok(Container {
            id: id.to_string(),
            state,
            child,
        })
    }

    /// `runc kill <id> <signal>` (e.g. `TERM`), as the kubelet stops a container.
    pub fn signal(&self, signal: &str) -> Result<()> {
        run_checked(
            Command::new("runc")
                .arg("--root")
                .arg(&self.state)
                .args(["kill", &self.id, signal]),
        )?;
        Ok(())
    }

    /// Waits (polling, up to `timeout`) for the container's process to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.child.error(format!("still running {timeout:?} after the signal")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails with the log tail if the container has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.child.ensure_running()
    }

    /// The container's runc process (for [`crate::process::wait_ready`]).
    pub fn child_mut(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// The last lines of the container's output.
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let runc = |args: &[&str]| {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&self.state)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        runc(&["kill", &self.id, "KILL"]);
        self.child.stop();
        runc(&["delete", "--force", &self.id]);
    }
}
