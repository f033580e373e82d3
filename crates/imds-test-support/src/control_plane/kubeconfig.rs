//! Self-contained kubeconfig files (certificates embedded) for the control plane's users.

use std::path::Path;

use anyhow::{Context, Result};

use super::CONTEXT;

pub(super) enum KubeconfigUser<'a> {
    ClientCert {
        name: &'a str,
        cert: &'a [u8],
        key: &'a [u8],
    },
    Token {
        name: &'a str,
        token: &'a str,
    },
}

/// Writes a self-contained kubeconfig (JSON, which is YAML) with embedded certificates.
pub(super) fn write_kubeconfig(path: &Path, server: &str, ca_pem: &[u8], user: KubeconfigUser) -> Result<()> {
    let (user_name, user_body) = match user {
        KubeconfigUser::ClientCert { name, cert, key } => (
            name.to_string(),
            serde_json::json!({
                "client-certificate-data": base64(cert),
                "client-key-data": base64(key),
            }),
        ),
        KubeconfigUser::Token { name, token } => (name.to_string(), serde_json::json!({ "token": token })),
    };
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": { "server": server, "certificate-authority-data": base64(ca_pem) },
        }],
        "users": [{ "name": user_name, "user": user_body }],
        "contexts": [{
            "name": CONTEXT,
            "context": { "cluster": CONTEXT, "user": user_name, "namespace": "default" },
        }],
        "current-context": CONTEXT,
        "preferences": {},
    });
    // Private (helm warns about group- or world-readable kubeconfigs).
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(&serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
