//! The operator's container image as an OCI image layout (built by `hack/image.sh`): its
//! manifest, config and layer listing, unpacking it into a runtime bundle (`umoci unpack`), and
//! rebuilding it (reproducibility checks).
//!
//! The layout comes from `IMDS_OPERATOR_IMAGE_DIR` (exported by `hack/setup.d/20-image.sh`, which
//! `hack/test.sh` sources), the static release binary it holds from `IMDS_OPERATOR_IMAGE_BIN`.
//! Tests fail, naming the variable, when either is missing: they never skip.

use crate::process::run_checked;
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The value of a required environment variable, or an error that says how to get it.
pub fn required_env(name: &str) -> Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => bail!(
            "{name} is not set: `make test` exports it from hack/setup.d/20-image.sh; to run this test \
             alone, `source hack/setup.d/20-image.sh` in a bash shell first (as root)"
        ),
    }
}

/// An OCI image layout directory and one tag in it.
#[derive(Debug, Clone)]
pub struct ImageLayout {
    /// The layout directory (with `index.json`, `oci-layout`, `blobs/`).
    pub dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`) of the image in it.
    pub tag: String,
}

impl ImageLayout {
    /// The image `hack/setup.d/20-image.sh` built: `IMDS_OPERATOR_IMAGE_DIR`, tagged with the
    /// crate version.
    pub fn from_env() -> Result<ImageLayout> {
        let dir = PathBuf::from(required_env("IMDS_OPERATOR_IMAGE_DIR")?);
        ensure!(
            dir.join("index.json").is_file(),
            "IMDS_OPERATOR_IMAGE_DIR={} is not an OCI image layout (no index.json); run `make image`",
            dir.display()
        );
        Ok(ImageLayout {
            dir,
            tag: operator_version()?,
        })
    }

    /// `dir:tag`, as umoci and skopeo's `oci:` transport name it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.dir.display(), self.tag)
    }

    /// The manifest digest (`sha256:…`) of the tag, from `index.json`.
    pub fn digest(&self) -> Result<String> {
        let index = read_json(&self.dir.join("index.json"))?;
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == self.tag.as_str())
            .and_then(|m| m["digest"].as_str())
            .map(String::from)
            .with_context(|| format!("tag {} not in {}/index.json", self.tag, self.dir.display()))
    }

    /// The path of a blob.
    pub fn blob(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("not a sha256 digest: {digest}"))?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// The image manifest.
    pub fn manifest(&self) -> Result<Value> {
        read_json(&self.blob(&self.digest()?)?)
    }

    /// The image config (user, entrypoint, labels, ...).
    pub fn config(&self) -> Result<Value> {
        let manifest = self.manifest()?;
        let digest = manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?;
        read_json(&self.blob(digest)?)
    }

    /// Every entry of every layer as `tar -tv` prints it (mode, owner, size, date, path).
    pub fn layer_listing(&self) -> Result<Vec<String>> {
        let manifest = self.manifest()?;
        let mut lines = Vec::new();
        for layer in manifest["layers"].as_array().context("manifest without layers")? {
            let digest = layer["digest"].as_str().context("layer without digest")?;
            let out = run_checked(
                Command::new("tar")
                    .args(["--numeric-owner", "-tvzf"])
                    .arg(self.blob(digest)?),
            )?;
            lines.extend(String::from_utf8_lossy(&out.stdout).lines().map(String::from));
        }
        Ok(lines)
    }

    /// Total size of the blobs (compressed layers, config, manifest) in bytes.
    pub fn blobs_size(&self) -> Result<u64> {
        let manifest = self.manifest()?;
        let mut size = 0;
        for layer in manifest["layers"].as_array().context("manifest without layers")? {
            size += layer["size"].as_u64().unwrap_or_default();
        }
        Ok(size + manifest["config"]["size"].as_u64().unwrap_or_default())
    }

    /// `umoci unpack` of the image into `bundle` (a runtime bundle: `config.json` and `rootfs/`).
    /// Needs root (the rootfs keeps the image's owners).
    pub fn unpack(&self, bundle: &Path) -> Result<()> {
        run_checked(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(self.reference())
                .arg(bundle),
        )?;
        Ok(())
    }
}

/// Runs `hack/image.sh` with `binary` (no cargo build) into the layout `out`; returns the
/// layout and the digest the script printed.
pub fn build_image(out: &Path, binary: &Path) -> Result<(ImageLayout, String)> {
    let script = crate::repo_root().join("hack/image.sh");
    let output = run_checked(
        Command::new("bash")
            .arg(script)
            .env("IMAGE_OUT", out)
            .env("IMAGE_BINARY", binary),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let digest = stdout.lines().last().unwrap_or_default().trim().to_string();
    ensure!(
        digest.starts_with("sha256:"),
        "hack/image.sh printed no digest: {stdout}"
    );
    let layout = ImageLayout {
        dir: out.to_path_buf(),
        tag: operator_version()?,
    };
    Ok((layout, digest))
}

/// The operator's version (the root Cargo.toml's `[package] version`): the image tag, the
/// chart's appVersion.
pub fn operator_version() -> Result<String> {
    let path = crate::repo_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let package = text.split("[package]").nth(1).context("Cargo.toml without [package]")?;
    package
        .lines()
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("Cargo.toml [package] without version")
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}
