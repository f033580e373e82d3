//! The fleet benchmark (issue 11): the release operator binary against the local control plane
//! and the EC2 double, with EC2's token buckets and latency, on fleets of realistic EKS Nodes.
//! One line per figure: measured, bound or target, ratio. Run: `make bench` (after the plan
//! benchmark) or `cargo bench --bench fleet`; `IMDS_BENCH=P1,P3` picks figures, and
//! docs/benchmarks.md lists every variable and the figures measured.
//!
//! - P1: convergence at EC2's Modify bucket (and without it), the peer (Cloud Custodian) beside.
//! - P2: a quiet steady state: calls and CPU per resync (P2R with a converged fleet's records,
//!   P2C with `--cluster-name`, P2I with instances that lack the cluster's tag, read by ID, P2F
//!   with answers the size of EC2's).
//! - P3: a joining node's Modify latency.
//! - P4: memory after the initial list (and a re-list) of many Nodes.
//! - P5: several operators sharing one account's bucket.
//!
//! Every wait is bounded; a figure that fails prints `FAILED` and why, and the others go on.

#[path = "fleet/common.rs"]
mod common;
#[path = "fleet/p1.rs"]
mod p1;
#[path = "fleet/p2.rs"]
mod p2;
#[path = "fleet/p3.rs"]
mod p3;
#[path = "fleet/p4.rs"]
mod p4;
#[path = "fleet/p5.rs"]
mod p5;
#[path = "fleet/peer.rs"]
mod peer;

use std::collections::BTreeSet;
use std::time::Instant;

use common::Report;

/// Every figure, in the order they run.
const FIGURES: [&str; 12] = [
    "P1", "PEER", "P1U", "P2", "P2R", "P2C", "P2I", "P2F", "P3", "P4", "P5", "P5X",
];

/// The figures to run: `IMDS_BENCH` (comma-separated, case-insensitive), default all.
pub struct Selection(BTreeSet<String>);

impl Selection {
    fn from_env() -> Selection {
        let text = common::env_or("IMDS_BENCH", &FIGURES.join(","));
        let chosen = text
            .split(',')
            .map(|s| s.trim().to_ascii_uppercase())
            .filter(|s| !s.is_empty())
            .collect::<BTreeSet<_>>();
        for unknown in chosen.iter().filter(|s| !FIGURES.contains(&s.as_str())) {
            eprintln!("IMDS_BENCH: unknown figure {unknown} (known: {})", FIGURES.join(","));
        }
        Selection(chosen)
    }

    /// Whether `figure` is selected.
    pub fn has(&self, figure: &str) -> bool {
        self.0.contains(figure)
    }
}

fn main() {
    imds_test_support::init_crypto();
    let selection = Selection::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let started = Instant::now();
    let mut report = Report::default();
    println!(
        "fleet benchmark: {} (operator {})",
        selection.0.iter().cloned().collect::<Vec<_>>().join(","),
        env!("CARGO_BIN_EXE_imds-operator")
    );
    runtime.block_on(async {
        if let Err(e) = p1::run(&selection, &mut report).await {
            report.failed("P1", &e);
        }
        for (figure, variant) in [
            ("P2", p2::Variant::Defaults),
            ("P2R", p2::Variant::WithRecords),
            ("P2C", p2::Variant::ClusterName),
            ("P2I", p2::Variant::Untagged),
            ("P2F", p2::Variant::Detailed),
        ] {
            if selection.has(figure)
                && let Err(e) = p2::run(&mut report, variant).await
            {
                report.failed(figure, &e);
            }
        }
        if selection.has("P3")
            && let Err(e) = p3::run(&mut report).await
        {
            report.failed("P3", &e);
        }
        if selection.has("P4")
            && let Err(e) = p4::run(&mut report).await
        {
            report.failed("P4", &e);
        }
        if let Err(e) = p5::run(&selection, &mut report).await {
            report.failed("P5", &e);
        }
    });
    println!("\nsummary ({:.0}s):", started.elapsed().as_secs_f64());
    for line in report.lines() {
        println!("  {line}");
    }
}
