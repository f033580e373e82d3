#!/usr/bin/env python3
"""Narrows a CycloneDX SBOM to the crates one build target links.

cargo-sbom lists the package's normal dependencies for every platform (windows-sys, wasm-bindgen,
security-framework, ...). The image is built for one Linux target, and an SBOM that names crates
the binary does not contain sends vulnerability scanners after code that is not there. Cargo's own
resolution for that target (`cargo tree -e normal --target <triple> --prefix none --format '{p}'`,
given on stdin) says which crates those are; every other component, and the dependency edges that
name it, are dropped.

Usage: cargo tree ... | sbom-for-target.py SBOM_IN SBOM_OUT
"""

import json
import sys


def linked_crates(lines):
    """`name@version` of each `name vX.Y.Z [(path)]` line of `cargo tree --format '{p}'`."""
    crates = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2:
            crates.add(f"{parts[0]}@{parts[1].lstrip('v')}")
    return crates


def narrow(sbom, keep):
    """The SBOM with only the components in `keep` (and their edges among themselves)."""
    components = [c for c in sbom.get("components", []) if f"{c.get('name')}@{c.get('version')}" in keep]
    kept_refs = {c["bom-ref"] for c in components if "bom-ref" in c}
    for nested in sbom.get("metadata", {}).get("component", {}).get("components", []):
        if "bom-ref" in nested:
            kept_refs.add(nested["bom-ref"])
    dependencies = []
    for edge in sbom.get("dependencies", []):
        if edge.get("ref") in kept_refs:
            dependencies.append({**edge, "dependsOn": [d for d in edge.get("dependsOn", []) if d in kept_refs]})
    return {**sbom, "components": components, "dependencies": dependencies}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    keep = linked_crates(sys.stdin)
    if not keep:
        sys.exit("sbom-for-target: no crates on stdin (cargo tree output expected)")
    with open(sys.argv[1], encoding="utf-8") as f:
        sbom = json.load(f)
    narrowed = narrow(sbom, keep)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(narrowed, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"sbom-for-target: {len(narrowed['components'])} of {len(sbom.get('components', []))} components kept", file=sys.stderr)


if __name__ == "__main__":
    main()
