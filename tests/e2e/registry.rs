//! Shipping through a registry (issue 12, rungs 3 and 4): a local OCI registry on loopback holds
//! the image (pushed from the OCI layout, referenced by digest) and the chart (`helm push`);
//! `helm install oci://…` and `helm upgrade` to a second chart version, whose CRD differs, run
//! against the local control plane (the CRD is a chart template: upgraded with the release, kept
//! on uninstall). Then `hack/release.sh`: its cosign signature over the image digest verifies
//! with the public key (no transparency log), and its SBOM lists every crate the binary links.

use anyhow::{Context, Result, ensure};
use imds_test_support::oci::{ImageLayout, required_env};
use imds_test_support::process::run_checked;
use imds_test_support::registry::Registry;
use imds_test_support::{ControlPlane, repo_root};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const NAMESPACE: &str = "imds-system";
const CRD: &str = "crd/instancemetadatapolicies.imds-operator.io";
const IMAGE_NAME: &str = "imds-operator/imds-operator";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn helm_ok(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let mut cmd = cp.helm();
    cmd.args(args);
    Ok(text(&run_checked(&mut cmd)?.stdout))
}

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let mut cmd = cp.kubectl();
    cmd.args(args);
    Ok(text(&run_checked(&mut cmd)?.stdout))
}

/// `skopeo copy` between two references, plain HTTP towards the local registry, digests kept.
fn skopeo_copy(from: &str, to: &str) -> Result<()> {
    run_checked(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        from,
        to,
    ]))?;
    Ok(())
}

/// The chart's `version:` in Chart.yaml.
fn chart_version(chart: &Path) -> Result<String> {
    let text = std::fs::read_to_string(chart.join("Chart.yaml"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("version: "))
        .map(|v| v.trim().to_string())
        .context("Chart.yaml without version")
}

/// A copy of the chart as its next version would be: the patch version bumped and the CRD
/// changed (a new printer column), to upgrade to.
fn next_chart(tmp: &Path) -> Result<(std::path::PathBuf, String)> {
    let chart = repo_root().join("charts/imds-operator");
    let next = tmp.join("next/imds-operator");
    run_checked(Command::new("mkdir").arg("-p").arg(next.parent().context("parent")?))?;
    run_checked(Command::new("cp").arg("-r").arg(&chart).arg(&next))?;
    let version = chart_version(&chart)?;
    let (base, patch) = version.rsplit_once('.').context("version without patch")?;
    let bumped = format!("{base}.{}", patch.parse::<u32>()? + 1);
    let chart_yaml = std::fs::read_to_string(next.join("Chart.yaml"))?;
    std::fs::write(
        next.join("Chart.yaml"),
        chart_yaml.replace(&format!("version: {version}\n"), &format!("version: {bumped}\n")),
    )?;
    let crd_path = next.join("templates/crd-instancemetadatapolicies.yaml");
    let crd = std::fs::read_to_string(&crd_path)?;
    let anchor = "  - additionalPrinterColumns:\n";
    ensure!(crd.contains(anchor), "the CRD template has no printer columns");
    let column = "    - jsonPath: .spec.priority\n      name: Priority\n      priority: 1\n      type: integer\n";
    std::fs::write(&crd_path, crd.replacen(anchor, &format!("{anchor}{column}"), 1))?;
    Ok((next, bumped))
}

fn printer_columns(cp: &ControlPlane) -> Result<String> {
    kubectl_ok(
        cp,
        &[
            "get",
            CRD,
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_and_image_install_and_upgrade_from_a_local_registry() -> Result<()> {
    let layout = ImageLayout::from_env()?;
    let registry = Registry::start().await?;
    let addr = registry.addr().to_string();
    let tmp = tempfile::tempdir()?;

    // The image, pushed from the layout; the registry serves it under the layout's digest, and
    // pulling it back by digest gives the same image.
    let digest = layout.digest()?;
    skopeo_copy(
        &format!("oci:{}", layout.reference()),
        &format!("docker://{addr}/{IMAGE_NAME}:{}", layout.tag),
    )?;
    assert_eq!(registry.manifest_digest(IMAGE_NAME, &layout.tag).await?, digest);
    let pulled = tmp.path().join("pulled");
    skopeo_copy(
        &format!("docker://{addr}/{IMAGE_NAME}@{digest}"),
        &format!("oci:{}:pulled", pulled.display()),
    )?;
    let pulled = ImageLayout {
        dir: pulled,
        tag: "pulled".into(),
    };
    assert_eq!(pulled.digest()?, digest, "the image pulled by digest differs");

    // Two chart versions, packaged and pushed to oci://<registry>/charts.
    let cp = ControlPlane::start().await?;
    let chart = repo_root().join("charts/imds-operator");
    let first = chart_version(&chart)?;
    let (next, second) = next_chart(tmp.path())?;
    let packages = tmp.path().join("packages");
    for dir in [&chart, &next] {
        helm_ok(&cp, &["package", path(dir)?, "--destination", path(&packages)?])?;
    }
    for version in [&first, &second] {
        let package = packages.join(format!("imds-operator-{version}.tgz"));
        let pushed = helm_ok(
            &cp,
            &["push", path(&package)?, &format!("oci://{addr}/charts"), "--plain-http"],
        )?;
        eprintln!("helm push {version}: {pushed}");
    }
    let chart_ref = format!("oci://{addr}/charts/imds-operator");
    let shown = helm_ok(
        &cp,
        &["show", "chart", &chart_ref, "--version", &second, "--plain-http"],
    )?;
    assert!(shown.contains(&format!("version: {second}")), "{shown}");

    // helm install from the registry, the image pinned by digest.
    let repository = format!("{addr}/{IMAGE_NAME}");
    let install_args = |verb: &str, version: &str| -> Vec<String> {
        [
            verb,
            "imds",
            chart_ref.as_str(),
            "--version",
            version,
            "--plain-http",
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            "aws.region=us-east-1",
            "--set",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("image.repository={repository}"),
            "--set".into(),
            format!("image.digest={digest}"),
        ])
        .collect()
    };
    let args = install_args("install", &first);
    let out = helm_ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert!(out.contains("STATUS: deployed"), "{out}");
    kubectl_ok(&cp, &["wait", "--for=condition=Established", "--timeout=60s", CRD])?;
    let image = kubectl_ok(
        &cp,
        &[
            "get",
            "deployment",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.items[0].spec.template.spec.containers[0].image}",
        ],
    )?;
    assert_eq!(image, format!("{repository}@{digest}"));
    let (name, reference) = image
        .split_once('/')
        .map(|(_, rest)| rest)
        .and_then(|r| r.split_once('@'))
        .context("image")?;
    assert_eq!(
        registry.manifest_digest(name, reference).await?,
        digest,
        "the pinned image resolves"
    );
    let keep = kubectl_ok(
        &cp,
        &[
            "get",
            CRD,
            "-o",
            "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
        ],
    )?;
    assert_eq!(keep, "keep");
    assert!(!printer_columns(&cp)?.contains("Priority"));
    let mut apply = cp.kubectl();
    apply.args(["apply", "-f"]).arg(repo_root().join("examples/policies"));
    run_checked(&mut apply)?;
    let before = kubectl_ok(&cp, &["get", "imp", "-o", "name"])?;
    ensure!(!before.trim().is_empty(), "no policies from examples/policies");

    // helm upgrade to the next chart version: the CRD is upgraded with it; policies stay.
    let args = install_args("upgrade", &second);
    helm_ok(
        &cp,
        &args
            .iter()
            .filter(|a| *a != "--create-namespace")
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;
    assert!(printer_columns(&cp)?.contains("Priority"), "the CRD was not upgraded");
    let chart_label = kubectl_ok(&cp, &["get", CRD, "-o", "jsonpath={.metadata.labels.helm\\.sh/chart}"])?;
    assert_eq!(chart_label, format!("imds-operator-{second}"));
    assert_eq!(kubectl_ok(&cp, &["get", "imp", "-o", "name"])?, before);

    // helm uninstall keeps the CRD, and so the policies.
    helm_ok(&cp, &["uninstall", "imds", "--namespace", NAMESPACE])?;
    assert_eq!(
        kubectl_ok(&cp, &["get", "imp", "-o", "name"])?,
        before,
        "uninstall deleted policies"
    );
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// `name@version` of every crate in `cargo tree -e normal` of the operator for this target:
/// what the release binary links.
fn linked_crates() -> Result<BTreeSet<String>> {
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = run_checked(
        Command::new("cargo")
            .current_dir(repo_root())
            .args([
                "tree",
                "--locked",
                "-p",
                "imds-operator",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(["--target", &target, "--format", "{p}"]),
    )?;
    Ok(text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?;
            let version = parts.next()?.trim_start_matches('v');
            Some(format!("{name}@{version}"))
        })
        .collect())
}

/// `name@version` of the SBOM's components (nested ones included).
fn sbom_components(sbom: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<&serde_json::Value> = vec![&sbom["metadata"]["component"]];
    stack.extend(sbom["components"].as_array().into_iter().flatten());
    while let Some(c) = stack.pop() {
        if let (Some(n), Some(v)) = (c["name"].as_str(), c["version"].as_str()) {
            out.insert(format!("{n}@{v}"));
        }
        stack.extend(c["components"].as_array().into_iter().flatten());
    }
    out
}

#[test]
fn release_is_signed_and_its_sbom_lists_the_linked_crates() -> Result<()> {
    let binary = required_env("IMDS_OPERATOR_IMAGE_BIN")?;
    let cosign = required_env("IMDS_OPERATOR_COSIGN")?;
    let dist = tempfile::tempdir()?;
    let out = run_checked(
        Command::new("bash")
            .arg(repo_root().join("hack/release.sh"))
            .env("DIST", dist.path())
            .env("IMAGE_BINARY", binary),
    )?;
    eprintln!("{}", text(&out.stderr));
    let d = dist.path();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("release.json"))?)?;
    let file = |key: &str| -> Result<std::path::PathBuf> {
        Ok(d.join(
            manifest[key]
                .as_str()
                .with_context(|| format!("release.json without {key}"))?,
        ))
    };
    let digest = manifest["imageDigest"].as_str().context("imageDigest")?.to_string();
    let layout = ImageLayout {
        dir: file("imageLayout")?,
        tag: manifest["version"].as_str().context("version")?.to_string(),
    };
    assert_eq!(layout.digest()?, digest);
    ensure!(file("chart")?.is_file(), "no chart package");

    // The signature verifies with the public key, offline (no transparency log), and what it
    // signs is this image's digest.
    let offline = |cmd: &mut Command| {
        cmd.env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9");
    };
    let mut verify = Command::new(&cosign);
    verify
        .args(["verify-blob", "--insecure-ignore-tlog", "--key"])
        .arg(file("publicKey")?);
    verify.arg("--signature").arg(file("signature")?).arg(file("payload")?);
    offline(&mut verify);
    run_checked(&mut verify)?;
    let payload: serde_json::Value = serde_json::from_slice(&std::fs::read(file("payload")?)?)?;
    assert_eq!(payload["critical"]["image"]["docker-manifest-digest"], digest.as_str());
    let mut tampered = std::fs::read(file("payload")?)?;
    tampered.extend_from_slice(b" ");
    let forged = d.join("forged-payload.json");
    std::fs::write(&forged, tampered)?;
    let mut refuse = Command::new(&cosign);
    refuse
        .args(["verify-blob", "--insecure-ignore-tlog", "--key"])
        .arg(file("publicKey")?);
    refuse.arg("--signature").arg(file("signature")?).arg(&forged);
    offline(&mut refuse);
    assert!(!refuse.output()?.status.success(), "a changed payload verified");

    // The SBOM lists exactly the crates the binary links (cargo tree, normal dependencies, the
    // image's target): no dev-only crate, no other platform's.
    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(file("sbom")?)?)?;
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let listed = sbom_components(&sbom);
    let linked = linked_crates()?;
    let missing: Vec<&String> = linked.difference(&listed).collect();
    assert!(missing.is_empty(), "linked but not in the SBOM: {missing:?}");
    let extra: Vec<&String> = listed.difference(&linked).collect();
    assert!(
        extra.is_empty(),
        "in the SBOM but not linked for this target: {extra:?}"
    );
    assert!(
        !listed.iter().any(|c| c.starts_with("proptest@")),
        "the SBOM lists dev-dependencies"
    );
    eprintln!(
        "SBOM: {} components, {} linked crates all listed; signature over {digest} verified",
        listed.len(),
        linked.len()
    );
    Ok(())
}

/// The public release workflow (the one shipping step not run here) passes actionlint.
#[test]
fn release_workflow_passes_actionlint() -> Result<()> {
    let actionlint = required_env("IMDS_OPERATOR_ACTIONLINT")?;
    let workflows = repo_root().join(".github/workflows");
    let release = workflows.join("release.yml");
    ensure!(release.is_file(), "no {}", release.display());
    let out = Command::new(&actionlint)
        .current_dir(repo_root())
        .arg("-no-color")
        .arg(&release)
        .output()
        .with_context(|| format!("running {actionlint}"))?;
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(())
}
