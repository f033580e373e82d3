//! Helpers of the observability tests (`tests/observability_files.rs`, `tests/e2e/observability.rs`):
//! the tools `hack/setup.d/30-observability.sh` provides (promtool, Lua, the kstatus checker), the
//! Argo CD health check run by a real Lua interpreter, kstatus results, and the policy states the
//! e2e suite captures with what Argo CD and kstatus must say about each.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub mod promql;

/// promtool (`IMDS_OPERATOR_PROMTOOL`).
pub const PROMTOOL_ENV: &str = "IMDS_OPERATOR_PROMTOOL";
/// A Lua 5.3/5.4 interpreter (`IMDS_OPERATOR_LUA`).
pub const LUA_ENV: &str = "IMDS_OPERATOR_LUA";
/// The kstatus checker, hack/tools/kstatus-check (`IMDS_OPERATOR_KSTATUS`).
pub const KSTATUS_ENV: &str = "IMDS_OPERATOR_KSTATUS";
/// Set to 1, the e2e capture test rewrites the Argo CD testdata from the live objects.
pub const CAPTURE_ENV: &str = "IMDS_OPERATOR_CAPTURE";

/// The Argo CD resource customization of the policy kind, in Argo CD's repository layout.
pub fn argocd_dir() -> PathBuf {
    crate::repo_root().join("deploy/argocd/resource_customizations/imds-operator.io/InstanceMetadataPolicy")
}

/// The tool named by `env`; fails (never skips) when it is missing, saying how to get it.
pub fn tool(env: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "{env} is not set: run the tests with hack/test.sh (make test), or first \
                 `source hack/setup.d/30-observability.sh`, which builds or installs the tool"
            )
        })?;
    ensure!(path.is_file(), "{env}={} does not exist", path.display());
    Ok(path)
}

/// A policy state the e2e suite drives the operator into, and what each consumer must say.
#[derive(Clone, Copy, Debug)]
pub struct PolicyState {
    /// The testdata file stem (`testdata/<name>.yaml`).
    pub name: &'static str,
    /// Argo CD's health (Healthy / Progressing / Degraded).
    pub argo: &'static str,
    /// kstatus' status, as the issue asks for it (Current only when Ready, InProgress while
    /// Reconciling, Failed when Stalled, never Current for a stale observedGeneration).
    pub kstatus: &'static str,
    /// Where kstatus says something else for the operator's real status: what it says, and why.
    pub kstatus_gap: Option<(&'static str, &'static str)>,
}

/// Every captured state.
pub const POLICY_STATES: [PolicyState; 10] = [
    state("no-status", "Progressing", "InProgress").gap(
        "Current",
        "kstatus calls an object without status.observedGeneration and conditions Current (it \
         cannot tell a CRD that has no status from one not reconciled yet); the operator writes \
         Reconciling=True NotObservedYet at its first look, so this lasts until it sees the policy",
    ),
    state("stale-generation", "Progressing", "InProgress"),
    state("compliant", "Healthy", "Current"),
    state("no-nodes-selected", "Healthy", "Current"),
    state("drifting", "Progressing", "InProgress"),
    state("pending", "Progressing", "InProgress"),
    state("stalled-conflict", "Degraded", "Failed"),
    state("stalled-unsupported-option", "Degraded", "Failed"),
    state("stalled-audit-drift", "Degraded", "Failed"),
    state("stalled-permission-denied", "Degraded", "Failed"),
];

const fn state(name: &'static str, argo: &'static str, kstatus: &'static str) -> PolicyState {
    PolicyState {
        name,
        argo,
        kstatus,
        kstatus_gap: None,
    }
}

impl PolicyState {
    const fn gap(mut self, says: &'static str, why: &'static str) -> PolicyState {
        self.kstatus_gap = Some((says, why));
        self
    }

    /// What kstatus says for this state's real object (the wanted value, or the known gap).
    pub fn kstatus_says(&self) -> &'static str {
        self.kstatus_gap.map_or(self.kstatus, |(says, _)| says)
    }
}

/// A JSON value as a Lua expression (null as `nil`, arrays 1-based, as Argo CD converts objects).
pub fn lua_literal(v: &Value) -> String {
    let mut out = String::new();
    write_lua(&mut out, v);
    out
}

fn write_lua(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_lua_string(out, s),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                write_lua(out, item);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, item) in map.iter().filter(|(_, item)| !item.is_null()) {
                out.push('[');
                write_lua_string(out, k);
                out.push_str("] = ");
                write_lua(out, item);
                out.push_str(", ");
            }
            out.push('}');
        }
    }
}

fn write_lua_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\{:03}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What a health check returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    pub message: String,
}

/// Runs the Argo CD health script `script` with the Lua interpreter `lua` on `obj` (a global, as
/// Argo CD provides it) and returns the table it returns.
pub fn argo_health(lua: &Path, script: &Path, obj: &Value) -> Result<Health> {
    let dir = tempfile::tempdir()?;
    let harness = dir.path().join("harness.lua");
    let script = script.to_str().context("script path")?;
    ensure!(!script.contains("]==]"), "unusual script path {script}");
    let text = format!(
        "obj = {}\nlocal hs = dofile([==[{script}]==])\nassert(type(hs) == \"table\", \"the script returned no table\")\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message), \"\\n\")\n",
        lua_literal(obj)
    );
    std::fs::write(&harness, text)?;
    let out = Command::new(lua)
        .arg(&harness)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", lua.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{} failed ({}): {}{stdout}",
        lua.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    match (lines.next(), lines.next()) {
        (Some(status), Some(message)) => Ok(Health {
            status: status.to_string(),
            message: message.to_string(),
        }),
        _ => bail!("unexpected output of the health check: {stdout:?}"),
    }
}

/// kstatus' (status, message) of each file, from the kstatus checker.
pub fn kstatus(tool: &Path, files: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let out = Command::new(tool)
        .args(files)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut results = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("kstatus-check printed {line:?}"))?;
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        results.push((field("status"), field("message")));
    }
    ensure!(results.len() == files.len(), "kstatus-check answered {results:?}");
    Ok(results)
}

/// A policy as captured for testdata: the fields a GitOps tool reads (apiVersion, kind, name,
/// generation, spec, status), without server bookkeeping (uid, resourceVersion, managedFields).
pub fn captured(policy: &Value) -> Value {
    let meta = &policy["metadata"];
    let mut metadata = serde_json::Map::new();
    for key in ["name", "generation"] {
        if !meta[key].is_null() {
            metadata.insert(key.to_string(), meta[key].clone());
        }
    }
    let mut out = serde_json::json!({
        "apiVersion": policy["apiVersion"],
        "kind": policy["kind"],
        "metadata": metadata,
        "spec": policy["spec"],
    });
    if !policy["status"].is_null() {
        out["status"] = policy["status"].clone();
    }
    out
}

/// Every alerting rule of Prometheus rule groups (`{groups: [{rules: [...]}]}`).
pub fn alert_rules(groups: &Value) -> Vec<Value> {
    groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["alert"].is_string())
        .collect()
}

/// The labels an alert's annotations name as `$labels.<name>`.
pub fn template_labels(rule: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for text in rule["annotations"].as_object().into_iter().flat_map(|a| a.values()) {
        let text = text.as_str().unwrap_or_default();
        for (at, _) in text.match_indices("$labels.") {
            let name: String = text[at + "$labels.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Every PromQL expression of a Grafana dashboard: panel targets, and the selector of each
/// template variable's `label_values(selector, label)` query (as `sum by (label) (selector)`).
pub fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = target["expr"].as_str() {
                exprs.push(e.to_string());
            }
        }
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = var["query"]["query"].as_str()
            && let Some(inner) = q.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'))
            && let Some((selector, label)) = inner.rsplit_once(',')
        {
            exprs.push(format!("sum by ({}) ({selector})", label.trim()));
        }
    }
    exprs
}
