//! TLS for `mqtts://` brokers: rustls with the ring provider (rustls' default, aws-lc-rs, does
//! not cross-compile easily for the boards), the system's CA certificates or a CA file, and an
//! optional client certificate, which managed brokers (AWS IoT Core, HiveMQ Cloud, EMQX Cloud)
//! often ask for. Everything is read and checked when the configuration is, so `check-config`
//! names a missing or malformed file before the service starts.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A PEM file of certificates or a key is a few kilobytes; a bundle of every public CA ~200 KB.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The files a TLS connection uses, as the configuration names them.
pub struct TlsFiles<'a> {
    /// CA certificates to trust; none = the system's.
    pub ca: Option<&'a Path>,
    /// The client's certificate chain and private key, both or neither.
    pub client: Option<(&'a Path, &'a Path)>,
}

/// The rustls configuration for `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let roots = match files.ca {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    // Deprecated since rustls 0.23.48 only because ring lacks the post-quantum key exchange of
    // aws-lc-rs, which the boards' cross builds cannot take (see the module docs).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: no protocol version in common with the ring provider")?
        .with_root_certificates(roots);
    let config = match files.client {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .with_context(|| format!("{}, {}: not a certificate and its key", cert.display(), key.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        bail!("{}: larger than {} KiB: not a PEM file", path.display(), MAX_PEM_BYTES / 1024);
    }
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: malformed PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read_pem(path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .with_context(|| format!("{}: malformed PEM", path.display()))?
        .with_context(|| format!("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display()))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!("TLS: no system CA certificates found (install ca-certificates, or give the broker's CA with --mqtt-ca FILE)");
    }
    Ok(roots)
}
