//! HTTPS for the HTTP API (`--https-addr`, Consul's `ports.https`): the agent's certificate and
//! key from PEM files, and with `--tls-verify-incoming` a client certificate required, signed by
//! `--tls-ca-file`.
//!
//! The files are read once at start and every error names the file and the flag, so a
//! misconfigured agent refuses to start instead of serving HTTPS nobody can use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where and how the agent serves HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsConfig {
    /// `--https-addr`.
    pub addr: SocketAddr,
    /// `--tls-cert-file`: the agent's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// `--tls-key-file`: its private key (PEM).
    pub key_file: PathBuf,
    /// `--tls-ca-file`: the CA that signs client certificates.
    pub ca_file: Option<PathBuf>,
    /// `--tls-verify-incoming`: refuse clients without a certificate signed by `ca_file`.
    pub verify_incoming: bool,
}

/// The files of the TLS flags as given, before they are checked against each other.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub https_addr: Option<SocketAddr>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub verify_incoming: bool,
}

impl HttpsConfig {
    /// The HTTPS settings the flags make, or why they do not fit together: a listener needs a
    /// certificate and key, verifying clients needs a CA, and files given with no HTTPS
    /// listener would do nothing (refused, so that nobody believes the API is encrypted).
    pub fn from_flags(flags: TlsFlags) -> anyhow::Result<Option<Self>> {
        let Some(addr) = flags.https_addr else {
            if let Some(flag) = [
                (flags.cert_file.is_some(), "--tls-cert-file"),
                (flags.key_file.is_some(), "--tls-key-file"),
                (flags.ca_file.is_some(), "--tls-ca-file"),
                (flags.verify_incoming, "--tls-verify-incoming"),
            ]
            .into_iter()
            .find_map(|(given, flag)| given.then_some(flag))
            {
                bail!(
                    "{flag} is for the HTTPS API, which is off: give --https-addr ADDR too (Consul's HTTPS port is 8501)"
                );
            }
            return Ok(None);
        };
        let (Some(cert_file), Some(key_file)) = (flags.cert_file, flags.key_file) else {
            bail!(
                "--https-addr {addr} needs the agent's certificate and key: give --tls-cert-file and --tls-key-file (PEM files)"
            );
        };
        if flags.verify_incoming && flags.ca_file.is_none() {
            bail!(
                "--tls-verify-incoming needs the CA that signs client certificates: give --tls-ca-file"
            );
        }
        let config = Self {
            addr,
            cert_file,
            key_file,
            ca_file: flags.ca_file,
            verify_incoming: flags.verify_incoming,
        };
        config.acceptor()?;
        Ok(Some(config))
    }

    /// The TLS side of the HTTPS listener.
    pub fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&self.cert_file, "--tls-cert-file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).with_context(|| {
            format!(
                "--tls-key-file {}: no PEM private key could be read",
                self.key_file.display()
            )
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match (&self.ca_file, self.verify_incoming) {
            (Some(ca_file), true) => {
                let roots = root_store(ca_file, "--tls-ca-file")?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .with_context(|| format!("--tls-ca-file {}", ca_file.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).with_context(|| {
            format!(
                "--tls-cert-file {} and --tls-key-file {} do not make a usable pair",
                self.cert_file.display(),
                self.key_file.display()
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The CA certificates of a PEM file (given by `flag`) as a store of trusted roots.
pub fn root_store(path: &Path, flag: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, flag)? {
        roots
            .add(cert)
            .with_context(|| format!("{flag} {}: not a CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// The certificates of a PEM file, at least one.
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let read = || -> Result<Vec<_>, rustls::pki_types::pem::Error> {
        CertificateDer::pem_file_iter(path)?.collect()
    };
    let certs = read().with_context(|| format!("{flag} {}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Option<SocketAddr> {
        Some("127.0.0.1:8501".parse().unwrap())
    }

    #[test]
    fn flags_that_do_not_fit_together_are_refused_naming_the_missing_one() {
        let refused = |flags: TlsFlags| HttpsConfig::from_flags(flags).unwrap_err().to_string();
        let only_cert = TlsFlags {
            cert_file: Some("a.pem".into()),
            ..TlsFlags::default()
        };
        assert!(refused(only_cert).contains("--https-addr"));
        let no_key = TlsFlags {
            https_addr: addr(),
            cert_file: Some("a.pem".into()),
            ..TlsFlags::default()
        };
        assert!(refused(no_key).contains("--tls-key-file"));
        let verify_without_ca = TlsFlags {
            https_addr: addr(),
            cert_file: Some("a.pem".into()),
            key_file: Some("a.key".into()),
            verify_incoming: true,
            ..TlsFlags::default()
        };
        assert!(refused(verify_without_ca).contains("--tls-ca-file"));
        let missing_files = TlsFlags {
            https_addr: addr(),
            cert_file: Some("/nonexistent/a.pem".into()),
            key_file: Some("/nonexistent/a.key".into()),
            ..TlsFlags::default()
        };
        let why = refused(missing_files);
        assert!(why.contains("--tls-cert-file /nonexistent/a.pem"), "{why}");
        assert_eq!(HttpsConfig::from_flags(TlsFlags::default()).unwrap(), None);
    }
}
