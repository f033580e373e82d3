.PHONY: test demo generate check lint build

# The one command that runs every test tier (unit, EC2 integration, end-to-end).
test:
	bash hack/test.sh

# A newcomer's first command: local control plane + moto, nodes on IMDSv1, the operator
# enforcing "require IMDSv2, hop limit 2", a before/after table.
demo:
	bash hack/demo.sh

# Regenerate the CRD YAML (crds/ and the chart's copy) from the Rust types.
generate:
	bash hack/generate.sh

# Formatting, lints, generated files.
check:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	bash hack/generate.sh --check

build:
	cargo build --release --locked --bin imds-operator
