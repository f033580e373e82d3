//! End-to-end tests (tier 3): the real operator binary against a real kube-apiserver + etcd and
//! moto's EC2 server (or the local EC2 double where moto cannot model EC2). Each test has its
//! own control plane and EC2 endpoint. The helpers are in `imds_test_support::e2e`.

mod defaults;
mod faults;
mod fleet_safety;
mod image;
mod invalid;
mod moto_scenarios;
mod node;
mod observability;
mod policy_reports;
mod records;
mod registry;
mod report;
mod safety;
mod shipping;
