//! `imds-operator report`: a one-shot look at every node — instance, current options, what the
//! policies want, drift, and what blocks it — before (or without) installing the operator. With
//! `--policy FILE` it evaluates policies that are not applied yet. The exit status says whether
//! the fleet complies, for CI and GitOps checks.

use crate::aws::cloudwatch::UsageReader;
use crate::aws::describe::Described;
use crate::aws::ec2::{Ec2, RateLimits};
use crate::telemetry::metrics::Metrics;
use anyhow::Context as _;
use imds_core::api::InstanceMetadataPolicy;
use imds_core::node::NodeFacts;
use imds_core::observation::{Failure, NodeInput, Observation};
use imds_core::options::{Field, FullOptions, ObservedOptions};
use imds_core::plan::guards::GuardFacts;
use imds_core::plan::{self, NodePlan, PlanInput};
use imds_core::provider_id;
use imds_core::selection::{self, FieldDecision, PolicyInput};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `imds-operator report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Evaluate the policies in this YAML file (several documents allowed) as if applied; a
    /// policy with the name of an applied one replaces it. Repeatable.
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// Ignore the policies applied in the cluster (only --policy files count).
    #[arg(long)]
    pub only_files: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// Output format of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for pipelines and auditors.
    Json,
}

/// One node in the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// The Node.
    pub node: String,
    /// Its instance, when the providerID names one.
    pub instance_id: Option<String>,
    /// The policies that select it.
    pub policies: Vec<String>,
    /// Current options by name (`unset` when EC2 reported none).
    pub current: BTreeMap<String, String>,
    /// What the policies want, by option name.
    pub wanted: BTreeMap<String, String>,
    /// Options that differ: `name: current → wanted`.
    pub drift: Vec<String>,
    /// `Compliant`, `Drifted`, `Blocked`, `Conflict`, `Failed`, `Skipped`, `Pending` or
    /// `NoPolicy`.
    pub state: String,
    /// What keeps it from complying (guard, conflict, skip reason, error), if anything.
    pub blocker: Option<String>,
    /// Refused IMDSv1 calls and the launch source.
    #[serde(flatten)]
    pub history: super::report_fleet::NodeHistory,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Every node, by name.
    pub nodes: Vec<NodeRow>,
    /// Nodes per state.
    pub summary: BTreeMap<String, usize>,
    /// True when no selected node is drifted, blocked, conflicted, failed or pending.
    pub compliant: bool,
    /// The region's account IMDS defaults and the policies they disagree with (not part of
    /// `compliant`: they decide what new instances launch with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_defaults: Option<super::report_defaults::AccountDefaultsSection>,
    /// The launch sources of the nodes, with how many are not compliant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub launch_sources: Vec<super::report_fleet::LaunchSourceRow>,
    /// Per policy, the Karpenter EC2NodeClasses that would launch its nodes drifted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_classes: Vec<super::report_fleet::PolicyNodeClasses>,
}

/// Pure: the report from the per-policy plans, the nodes and what EC2 said.
pub fn build(
    nodes: &[NodeInput],
    policies: &[PolicyInput],
    plans_by_policy: &[(String, Vec<NodePlan>)],
    observations: &HashMap<String, Observation>,
) -> Report {
    let mut rows = Vec::new();
    for node in nodes {
        let instance_id = provider_id::parse(node.provider_id.as_deref())
            .ok()
            .map(|i| i.instance_id);
        let mut row = NodeRow {
            node: node.name.clone(),
            instance_id: instance_id.clone(),
            ..Default::default()
        };
        if let Some(Observation::Found(o)) = instance_id.as_ref().and_then(|id| observations.get(id)) {
            row.current = current_options(o);
        }
        let selecting: Vec<&PolicyInput> = policies.iter().filter(|p| p.selects(&node.labels)).collect();
        row.policies = selecting.iter().map(|p| p.name.clone()).collect();
        for (field, decision) in selection::decide(selecting.iter().copied()) {
            let wanted = match decision {
                FieldDecision::Decided { value, .. } => value.to_string(),
                FieldDecision::Conflict { .. } => "conflict".to_string(),
            };
            row.wanted.insert(field.name().to_string(), wanted);
        }
        let mine: Vec<&NodePlan> = plans_by_policy
            .iter()
            .filter_map(|(_, plans)| plans.iter().find(|p| p.node == node.name))
            .collect();
        let worst = mine.iter().min_by_key(|p| p.state);
        row.state = worst.map_or("NoPolicy", |p| p.state.name()).to_string();
        let mut drift: Vec<String> = mine
            .iter()
            .flat_map(|p| p.drift.iter().map(ToString::to_string))
            .collect();
        drift.sort();
        drift.dedup();
        row.drift = drift;
        row.blocker = worst.and_then(|p| p.blocker());
        rows.push(row);
    }
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    let mut summary = BTreeMap::new();
    for row in &rows {
        *summary.entry(row.state.clone()).or_insert(0) += 1;
    }
    let compliant = rows
        .iter()
        .all(|r| matches!(r.state.as_str(), "Compliant" | "Skipped" | "NoPolicy"));
    Report {
        nodes: rows,
        summary,
        compliant,
        account_defaults: None,
        launch_sources: Vec::new(),
        node_classes: Vec::new(),
    }
}

fn current_options(o: &ObservedOptions) -> BTreeMap<String, String> {
    Field::ALL
        .iter()
        .map(|f| {
            let value = o.values.get(*f).map_or_else(|| "unset".to_string(), |v| v.to_string());
            (f.name().to_string(), value)
        })
        .collect()
}

/// Renders the report as a table.
pub fn table(report: &Report) -> String {
    let short = |m: &BTreeMap<String, String>| {
        if m.is_empty() {
            return "-".to_string();
        }
        Field::ALL
            .iter()
            .filter_map(|f| m.get(f.name()).map(|v| format!("{}={v}", short_name(*f))))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut lines = vec![[
        "NODE".to_string(),
        "INSTANCE".to_string(),
        "STATE".to_string(),
        "CURRENT".to_string(),
        "WANTED".to_string(),
        "REJECTED".to_string(),
        "SOURCE".to_string(),
        "BLOCKER".to_string(),
    ]];
    for r in &report.nodes {
        lines.push([
            r.node.clone(),
            r.instance_id.clone().unwrap_or_else(|| "-".into()),
            r.state.clone(),
            short(&r.current),
            short(&r.wanted),
            r.history.rejected_calls.map_or_else(|| "-".into(), |n| n.to_string()),
            r.history.launch_source.clone().unwrap_or_else(|| "-".into()),
            r.blocker.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let summary: Vec<String> = report.summary.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    out.push_str(&format!(
        "\n{} nodes; {}; fleet {}\n",
        report.nodes.len(),
        summary.join(", "),
        if report.compliant {
            "COMPLIES"
        } else {
            "DOES NOT COMPLY"
        }
    ));
    if let Some(section) = &report.account_defaults {
        out.push_str(&super::report_defaults::text(section));
    }
    out.push_str(&super::report_fleet::text(&report.launch_sources));
    out.push_str(&super::report_fleet::node_classes_text(&report.node_classes));
    out
}

fn short_name(f: Field) -> &'static str {
    match f {
        Field::HttpTokens => "tokens",
        Field::HopLimit => "hop",
        Field::HttpEndpoint => "endpoint",
        Field::HttpProtocolIpv6 => "ipv6",
        Field::InstanceMetadataTags => "tags",
    }
}

/// Reads policies from a YAML file (several documents allowed).
pub fn read_policy_file(path: &PathBuf) -> anyhow::Result<Vec<InstanceMetadataPolicy>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if value.is_null() {
            continue;
        }
        let policy: InstanceMetadataPolicy = serde_yaml::from_value(value)
            .with_context(|| format!("{} is not an InstanceMetadataPolicy", path.display()))?;
        out.push(policy);
    }
    Ok(out)
}

use serde::Deserialize as _;

/// Runs the report; returns whether the fleet complies.
pub async fn run(args: ReportArgs) -> anyhow::Result<bool> {
    super::run::install_crypto_provider();
    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let policies = gather_policies(&args, &client).await?;
    let node_classes = super::report_fleet::node_classes(&client, &policies).await;
    let node_list = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    let nodes: Vec<NodeInput> = node_list
        .items
        .iter()
        .map(|n| NodeFacts::of_node(n).to_input())
        .collect();
    let ids: Vec<String> = nodes
        .iter()
        .filter_map(|n| provider_id::parse(n.provider_id.as_deref()).ok())
        .map(|i| i.instance_id)
        .collect();

    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let metrics = Arc::new(Metrics::new());
    let limits = RateLimits {
        describe_per_second: 5.0,
        describe_burst: 10,
        modify_per_second: 1.0,
        modify_burst: 1,
    };
    let ec2 = Ec2::new(aws_sdk_ec2::Client::new(&aws), limits, metrics.clone());
    let usage = UsageReader::new(aws_sdk_cloudwatch::Client::new(&aws), metrics);
    let described = ec2.describe_instances(&ids).await;
    let observations: HashMap<String, Observation> = described
        .iter()
        .map(|(id, d)| (id.clone(), d.observation.clone()))
        .collect();
    let mut facts = tag_facts(&described);
    let plan_all = |facts: &HashMap<String, GuardFacts>| plan_every_policy(&policies, &nodes, &observations, facts);
    let mut plans = plan_all(&facts);
    let wanted = plan::usage_wanted(plans.iter().flat_map(|(_, ps)| ps));
    if !wanted.is_empty() {
        for answer in usage.read_wanted(wanted, std::time::SystemTime::now()).await {
            if let Some(f) = facts.get_mut(&answer.instance_id) {
                f.imdsv1_calls.insert(answer.lookback, answer.calls);
            }
        }
        plans = plan_all(&facts);
    }
    let mut report = build(&nodes, &policies, &plans, &observations);
    let sources = described
        .iter()
        .filter_map(|(id, d)| Some((id.clone(), d.launch_source.clone()?)));
    let rejected = super::report_fleet::read_rejected(&usage, &ids, std::time::SystemTime::now()).await;
    let rows = report.nodes.iter_mut().map(|r| {
        let compliant = matches!(r.state.as_str(), "Compliant" | "Skipped" | "NoPolicy");
        (r.instance_id.as_deref(), compliant, &mut r.history)
    });
    report.launch_sources = super::report_fleet::annotate(rows, &sources.collect(), &rejected);
    report.node_classes = node_classes;
    report.account_defaults = Some(super::report_defaults::section(ec2.get_defaults().await, &policies));
    match args.output {
        OutputFormat::Table => print!("{}", table(&report)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(report.compliant)
}

/// The policies applied in the cluster (unless `--only-files`), replaced by name by those of
/// the `--policy` files.
async fn gather_policies(args: &ReportArgs, client: &kube::Client) -> anyhow::Result<Vec<PolicyInput>> {
    let mut by_name: BTreeMap<String, InstanceMetadataPolicy> = BTreeMap::new();
    if !args.only_files {
        let api: Api<InstanceMetadataPolicy> = Api::all(client.clone());
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for p in list.items {
                    by_name.insert(kube::ResourceExt::name_any(&p), p);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                eprintln!("note: the InstanceMetadataPolicy CRD is not installed; using --policy files only");
            }
            Err(e) => return Err(e).context("listing InstanceMetadataPolicy objects"),
        }
    }
    for path in &args.policies {
        for p in read_policy_file(path)? {
            by_name.insert(kube::ResourceExt::name_any(&p), p);
        }
    }
    Ok(by_name
        .values()
        .map(PolicyInput::from_policy)
        .collect::<Result<_, _>>()?)
}

/// The guard facts DescribeInstances gives (tag keys); usage is read later, where wanted.
fn tag_facts(described: &HashMap<String, Described>) -> HashMap<String, GuardFacts> {
    described
        .iter()
        .map(|(id, d)| {
            let f = GuardFacts {
                tag_keys: d.tag_keys.clone(),
                imdsv1_calls: BTreeMap::new(),
                launched: d.launched,
            };
            (id.clone(), f)
        })
        .collect()
}

/// Every policy's plans (no refusals: the report sends nothing).
fn plan_every_policy(
    policies: &[PolicyInput],
    nodes: &[NodeInput],
    observations: &HashMap<String, Observation>,
    facts: &HashMap<String, GuardFacts>,
) -> Vec<(String, Vec<NodePlan>)> {
    let refusals: HashMap<String, (FullOptions, Failure)> = HashMap::new();
    policies
        .iter()
        .map(|p| {
            let input = PlanInput {
                policy: p,
                policies,
                observations,
                refusals: &refusals,
                guard_facts: facts,
            };
            (p.name.clone(), plan::plan(&input, nodes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_core::api::{HttpTokens, MetadataOptions, PolicyMode, Toggle};
    use imds_core::fixtures::{hop, policy, tokens};
    use imds_core::options::ApplyState;

    fn node(name: &str, id: Option<&str>) -> NodeInput {
        NodeInput {
            name: name.into(),
            labels: Default::default(),
            provider_id: id.map(|i| format!("aws:///us-east-1a/{i}")),
        }
    }

    fn found(t: HttpTokens, h: i32) -> Observation {
        Observation::Found(ObservedOptions {
            values: MetadataOptions {
                http_tokens: Some(t),
                http_put_response_hop_limit: Some(h),
                http_endpoint: Some(Toggle::Enabled),
                http_protocol_ipv6: Some(Toggle::Disabled),
                instance_metadata_tags: Some(Toggle::Disabled),
            },
            state: ApplyState::Applied,
        })
    }

    fn report_for(policies: Vec<PolicyInput>, nodes: Vec<NodeInput>, obs: HashMap<String, Observation>) -> Report {
        let refusals = HashMap::new();
        let facts = imds_core::plan::guards::NoGuardFacts;
        let plans: Vec<(String, Vec<NodePlan>)> = policies
            .iter()
            .map(|p| {
                let input = PlanInput {
                    policy: p,
                    policies: &policies,
                    observations: &obs,
                    refusals: &refusals,
                    guard_facts: &facts,
                };
                (p.name.clone(), plan::plan(&input, &nodes))
            })
            .collect();
        build(&nodes, &policies, &plans, &obs)
    }

    const A: &str = "i-0000000000000000a";
    const B: &str = "i-0000000000000000b";

    #[test]
    fn report_rows_and_verdict() {
        let policies = vec![
            policy("v2", 0, PolicyMode::Enforce, tokens(HttpTokens::Required)),
            policy("hop", 0, PolicyMode::Audit, hop(2)),
        ];
        let nodes = vec![node("b-ok", Some(B)), node("a-drift", Some(A)), node("fargate", None)];
        let obs: HashMap<String, Observation> = [
            (A.to_string(), found(HttpTokens::Optional, 1)),
            (B.to_string(), found(HttpTokens::Required, 2)),
        ]
        .into();
        let report = report_for(policies, nodes, obs);
        let names: Vec<&str> = report.nodes.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(names, vec!["a-drift", "b-ok", "fargate"]);
        let a = &report.nodes[0];
        assert_eq!(a.state, "Drifted");
        assert_eq!(
            a.drift,
            vec!["httpPutResponseHopLimit: 1 → 2", "httpTokens: optional → required"]
        );
        assert_eq!(a.wanted.get("httpTokens").map(String::as_str), Some("required"));
        assert_eq!(report.nodes[1].state, "Compliant");
        assert_eq!(report.nodes[2].state, "Skipped");
        assert!(
            report.nodes[2]
                .blocker
                .as_deref()
                .unwrap_or("")
                .starts_with("NoProviderID")
        );
        assert!(!report.compliant);
        assert_eq!(report.summary.get("Drifted"), Some(&1));
        let text = table(&report);
        assert!(text.contains("DOES NOT COMPLY"), "{text}");
        assert!(text.contains("tokens=optional,hop=1"), "{text}");
    }

    #[test]
    fn compliant_fleet_and_unselected_nodes() {
        let mut only_pool = policy("pool", 0, PolicyMode::Enforce, tokens(HttpTokens::Required));
        only_pool.selector = [("pool", "a")].into_iter().collect();
        let mut selected = node("in-pool", Some(A));
        selected.labels.insert("pool", "a");
        let obs: HashMap<String, Observation> = [(A.to_string(), found(HttpTokens::Required, 1))].into();
        let report = report_for(vec![only_pool], vec![selected, node("elsewhere", Some(B))], obs);
        assert!(report.compliant);
        assert_eq!(report.nodes[0].state, "NoPolicy");
        assert_eq!(report.nodes[1].state, "Compliant");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["compliant"], true);
        assert_eq!(json["nodes"][1]["instanceId"], A);
    }
}
