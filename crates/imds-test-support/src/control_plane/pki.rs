//! The control plane's certificates and keys, made with `openssl` (`$OPENSSL` or the one on
//! `PATH`): a serving CA and the apiserver's certificate, a client CA and an admin certificate
//! (group `system:masters`), and the service-account signing key.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::process::run_checked;

const CA_EXT: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

fn openssl() -> Command {
    Command::new(std::env::var_os("OPENSSL").unwrap_or_else(|| "openssl".into()))
}

/// Writes into `pki`: `ca.{crt,key}` (serving CA), `apiserver.{crt,key}`,
/// `client-ca.{crt,key}`, `admin.{crt,key}` (CN=admin, O=system:masters), `sa.{key,pub}`.
pub(super) fn generate_pki(pki: &Path) -> Result<()> {
    let cnf = pki.join("openssl.cnf");
    std::fs::write(&cnf, CA_EXT)?;
    let f = |name: &str| pki.join(name);
    let new_ca = |name: &str, cn: &str| -> Result<()> {
        run_checked(
            openssl()
                .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "7"])
                .args(["-subj", &format!("/CN={cn}"), "-extensions", "ca", "-config"])
                .arg(&cnf)
                .arg("-keyout")
                .arg(f(&format!("{name}.key")))
                .arg("-out")
                .arg(f(&format!("{name}.crt"))),
        )?;
        Ok(())
    };
    let new_leaf = |name: &str, ca: &str, subj: &str, ext: &str| -> Result<()> {
        let csr = f(&format!("{name}.csr"));
        run_checked(
            openssl()
                .args(["req", "-new", "-nodes", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", subj])
                .arg("-config")
                .arg(&cnf)
                .arg("-keyout")
                .arg(f(&format!("{name}.key")))
                .arg("-out")
                .arg(&csr),
        )?;
        run_checked(
            openssl()
                .args(["x509", "-req", "-days", "7", "-set_serial"])
                .arg(random_serial())
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(f(&format!("{ca}.crt")))
                .arg("-CAkey")
                .arg(f(&format!("{ca}.key")))
                .arg("-extfile")
                .arg(&cnf)
                .args(["-extensions", ext, "-out"])
                .arg(f(&format!("{name}.crt"))),
        )?;
        Ok(())
    };
    new_ca("ca", "imds-operator-test-ca")?;
    new_leaf("apiserver", "ca", "/CN=kube-apiserver", "server")?;
    new_ca("client-ca", "imds-operator-test-client-ca")?;
    new_leaf("admin", "client-ca", "/O=system:masters/CN=admin", "client")?;
    run_checked(
        openssl()
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(f("sa.key")),
    )?;
    run_checked(
        openssl()
            .args(["pkey", "-pubout", "-in"])
            .arg(f("sa.key"))
            .arg("-out")
            .arg(f("sa.pub")),
    )?;
    Ok(())
}

fn random_serial() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("0x{:x}{:x}", nanos, std::process::id())
}
