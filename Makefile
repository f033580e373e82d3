.PHONY: test test-node demo generate check lint build bench doc

# The one command that runs every test tier (unit, EC2 integration, end-to-end).
test:
	bash hack/test.sh

# Issue 12, rung 5 (not part of `make test` or CI; root): the chart's pods on two real kubelets with
# containerd, kube-controller-manager and kube-scheduler (hack/test-node.sh, docs/real-node.md).
test-node:
	bash hack/test-node.sh

# A newcomer's first command: local control plane + moto, nodes on IMDSv1, the operator
# enforcing "require IMDSv2, hop limit 2", a before/after table.
demo:
	bash hack/demo.sh

# Regenerate the CRD YAML (crds/ and the chart's copy) from the Rust types.
generate:
	bash hack/generate.sh

# Formatting, lints, generated files, the layout rules (a pure core that cannot do IO, no import
# cycles, short functions and files) and docs that build without warnings.
check:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	bash hack/generate.sh --check
	bash hack/check-core-purity.sh
	python3 hack/check-layout.py
	RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps

# API docs of every crate (target/doc).
doc:
	cargo doc --locked --workspace --no-deps

# Benchmarks; they print figures and are not part of `make test`: planning at 5,000 nodes, then
# the fleet (issue 11: the release operator against the local control plane and the EC2 double
# with EC2's buckets and latency, Cloud Custodian beside it). IMDS_BENCH=P1,P3 picks figures;
# docs/benchmarks.md has every variable and the figures measured.
bench:
	bash hack/bench.sh

build:
	cargo build --release --locked --bin imds-operator

.PHONY: image release

# The container image, daemonless and reproducible (hack/image.sh): the static release binary and
# an OCI image layout in dist/image (umoci; `skopeo copy oci:dist/image:<version> ...` pushes it).
image:
	bash hack/image.sh

# Release artifacts in dist/ (hack/release.sh): chart package, image (OCI layout), CycloneDX SBOM,
# cosign signature over the image digest (local key pair, no transparency log).
release:
	bash hack/release.sh
