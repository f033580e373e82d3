//! Prints what reading DescribeInstances answers costs: one page of 1,000 instances (EKS
//! workers with their tags), as the EC2 double writes it by default (ID, state, type, launch
//! time, tags, metadata options) and detailed (everything else EC2 says of an instance: network
//! interfaces and their addresses, block devices, placement…; the size of EC2's answers), read
//! by the operator's reader (`aws::describe_answer::parse`). Figures: bytes per instance, the
//! median time of a page, per 5,000 instances, and the detailed/default ratios measured in the
//! same run; beside each, what tokenizing every element of the page takes (the reader before it
//! skipped the elements it does not read). Run: `cargo bench --bench answers`.

use imds_core::api::HttpTokens;
use imds_core::options::FullOptions;
use imds_operator::aws::describe_answer::parse;
use imds_test_support::Ec2Double;
use imds_test_support::nodes::EksFleet;
use std::time::{Duration, Instant};

/// Instances on the page (EC2's largest page).
const PAGE: usize = 1000;
/// Timed reads of each page (after two untimed ones).
const ROUNDS: usize = 21;

/// The first page of a listing of every instance, as the double answers it.
fn page(double: &Ec2Double, runtime: &tokio::runtime::Runtime) -> Vec<u8> {
    let body = "Action=DescribeInstances&Version=2016-11-15&MaxResults=1000";
    runtime.block_on(async {
        let answer = reqwest::Client::new()
            .post(double.endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("the double answers");
        answer.bytes().await.expect("an answer body").to_vec()
    })
}

/// The median time of `read` over `body` (after two untimed reads).
fn median_time<T>(body: &[u8], read: impl Fn(&[u8]) -> T) -> Duration {
    for _ in 0..2 {
        std::hint::black_box(read(body));
    }
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            let out = read(std::hint::black_box(body));
            let took = started.elapsed();
            std::hint::black_box(out);
            took
        })
        .collect();
    times.sort();
    times[ROUNDS / 2]
}

/// Every event of `body` from `quick-xml`'s tokenizer, handled by nobody: what reading the whole
/// answer costs before any of it is kept (the reader before it skipped unread elements).
fn tokenize_all(body: &[u8]) -> usize {
    let mut reader = quick_xml::reader::Reader::from_reader(body);
    let mut events = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) | Err(_) => return events,
            Ok(_) => events += 1,
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let double = Ec2Double::start_blocking();
    let fleet = EksFleet::new("answers");
    let options = FullOptions {
        http_tokens: HttpTokens::Required,
        ..FullOptions::EC2_LAUNCH_DEFAULTS
    };
    for i in 0..PAGE {
        let tags = fleet.instance_tags(i);
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        double.add_instance(&fleet.instance_id(i), options, &tags);
    }
    let mut figures = Vec::new();
    for (shape, detailed) in [("default", false), ("detailed", true)] {
        double.detailed_answers(detailed);
        let body = page(&double, &runtime);
        let read = parse(&body).expect("the double's answer reads");
        assert_eq!(read.instances.len(), PAGE, "every instance read");
        let took = median_time(&body, parse);
        let tokenized = median_time(&body, tokenize_all);
        let per_instance = body.len() as f64 / PAGE as f64;
        let mb_per_s = body.len() as f64 / took.as_secs_f64() / 1e6;
        println!(
            "answers {shape:8} {per_instance:6.0} B/instance: a page of {PAGE} read in {:.2} ms (median of {ROUNDS}), {:.1} ms per 5,000 instances, {mb_per_s:.0} MB/s",
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3 * 5.0,
        );
        println!(
            "answers {shape:8} tokenizing every element of the page instead: {:.2} ms ({} events), {:.1}x the reading",
            tokenized.as_secs_f64() * 1e3,
            tokenize_all(&body),
            tokenized.as_secs_f64() / took.as_secs_f64(),
        );
        figures.push((per_instance, took));
    }
    if let [(lean_bytes, lean), (full_bytes, full)] = figures[..] {
        println!(
            "answers detailed/default: bytes {:.1}x, time {:.1}x",
            full_bytes / lean_bytes,
            full.as_secs_f64() / lean.as_secs_f64()
        );
    }
}
