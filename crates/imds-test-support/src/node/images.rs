//! Images for containerd without a registry: the pod sandbox ("pause") image built here from
//! `pause.c` (a static binary that sleeps until SIGTERM and reaps orphans, as upstream's pause
//! does) with umoci, and the operator's OCI layout; both as OCI archives (`skopeo copy
//! oci:… oci-archive:…`) that `ctr images import` takes, named so that nothing is ever pulled.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::oci::ImageLayout;
use crate::process::run_checked;

/// The sandbox image's name in containerd (containerd's `sandbox_image`).
pub const PAUSE_IMAGE: &str = "localhost/imds-e2e/pause:3.10";
const PAUSE_C: &str = include_str!("pause.c");

/// Compiles `pause.c` statically (`$CC`, default `cc`) and builds the pause image, an OCI
/// archive at `<dir>/pause.tar` named [`PAUSE_IMAGE`]. Returns the archive's path.
pub fn pause_archive(dir: &Path) -> Result<PathBuf> {
    let work = dir.join("pause");
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("pause.c"), PAUSE_C)?;
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    run_checked(
        Command::new(cc)
            .args(["-static", "-Os", "-s", "-o"])
            .arg(work.join("pause"))
            .arg(work.join("pause.c")),
    )
    .context("compiling the pause program (static glibc: libc6-dev)")?;
    let layout = format!("{}:3.10", work.join("layout").display());
    run_checked(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(work.join("layout")),
    )?;
    run_checked(Command::new("umoci").args(["new", "--image", &layout]))?;
    run_checked(
        Command::new("umoci")
            .args(["insert", "--image", &layout])
            .arg(work.join("pause"))
            .arg("/pause"),
    )?;
    run_checked(Command::new("umoci").args([
        "config",
        "--image",
        &layout,
        "--config.entrypoint",
        "/pause",
        "--config.user",
        "65535:65535",
        "--os",
        "linux",
        "--architecture",
        oci_arch(),
    ]))?;
    let archive = dir.join("pause.tar");
    skopeo_to_archive(&format!("oci:{layout}"), &archive, PAUSE_IMAGE)?;
    Ok(archive)
}

/// The operator's image layout as an OCI archive at `<dir>/operator.tar`, named `name`.
pub fn layout_archive(layout: &ImageLayout, dir: &Path, name: &str) -> Result<PathBuf> {
    let archive = dir.join("operator.tar");
    skopeo_to_archive(&format!("oci:{}", layout.reference()), &archive, name)?;
    Ok(archive)
}

fn skopeo_to_archive(from: &str, archive: &Path, name: &str) -> Result<()> {
    let _ = std::fs::remove_file(archive);
    run_checked(
        Command::new("skopeo")
            .args(["copy", "--quiet", from])
            .arg(format!("oci-archive:{}:{name}", archive.display())),
    )?;
    Ok(())
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}
