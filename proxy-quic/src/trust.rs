//! The trust bundle: the CA roots of every datacenter, each vouching only for leaves of its
//! own datacenter.
//!
//! A chain that reaches *some* trusted root is not enough once datacenters federate: each
//! datacenter's signers hold only that datacenter's root keys (there is no primary holding
//! them all), and a leaf names its datacenter in its SPIFFE id. So a leaf of datacenter X is
//! checked against X's roots alone, and a signer of one datacenter cannot mint an identity of
//! another. Both ends of a mesh connection judge the other's leaf this way, in the handshake.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::{leaf_identity, pem_der};
use crate::tls::TlsError;

/// A root to trust, with the datacenter whose leaves it signs (as the agent lists it in
/// `/v1/agent/connect/ca/roots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedRoot {
    /// The datacenter whose leaves it may vouch for.
    pub datacenter: String,
    /// The root certificate, PEM.
    pub cert_pem: String,
}

/// The roots to trust, kept apart by datacenter.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    by_datacenter: BTreeMap<String, Arc<RootCertStore>>,
}

/// The crypto of every mesh TLS configuration: ring.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TrustBundle {
    /// The bundle of `roots`; refused when it is empty or a root does not parse.
    pub fn new(roots: &[TrustedRoot]) -> Result<Self, TlsError> {
        let mut stores: BTreeMap<String, RootCertStore> = BTreeMap::new();
        for root in roots {
            if root.datacenter.is_empty() {
                return Err(TlsError::Roots(
                    "a root names no datacenter: the agent is older than this proxy; upgrade it"
                        .into(),
                ));
            }
            let der = CertificateDer::from(pem_der(&root.cert_pem, "a root certificate")?);
            stores
                .entry(root.datacenter.clone())
                .or_insert_with(RootCertStore::empty)
                .add(der)
                .map_err(|e| TlsError::Roots(e.to_string()))?;
        }
        if stores.is_empty() {
            return Err(TlsError::Roots("the agent listed none".into()));
        }
        Ok(Self {
            by_datacenter: stores
                .into_iter()
                .map(|(dc, store)| (dc, Arc::new(store)))
                .collect(),
        })
    }

    /// The datacenters with a trusted root, by name.
    pub fn datacenters(&self) -> impl Iterator<Item = &str> {
        self.by_datacenter.keys().map(String::as_str)
    }

    /// What a client checks a server's leaf with.
    pub fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        let verifiers = self.per_datacenter(|roots| {
            WebPkiServerVerifier::builder_with_provider(roots, provider()).build()
        })?;
        Ok(Arc::new(verifiers))
    }

    /// What a server checks a client's leaf with (a leaf is required).
    pub fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let verifiers = self.per_datacenter(|roots| {
            WebPkiClientVerifier::builder_with_provider(roots, provider()).build()
        })?;
        Ok(Arc::new(verifiers))
    }

    /// A verifier per datacenter, each made by `build` from that datacenter's roots alone.
    fn per_datacenter<V: ?Sized, E: std::fmt::Display>(
        &self,
        build: impl Fn(Arc<RootCertStore>) -> Result<Arc<V>, E>,
    ) -> Result<ByDatacenter<V>, TlsError> {
        let mut by_datacenter = BTreeMap::new();
        for (dc, roots) in &self.by_datacenter {
            let verifier = build(roots.clone()).map_err(|e| TlsError::Roots(e.to_string()))?;
            by_datacenter.insert(dc.clone(), verifier);
        }
        Ok(ByDatacenter::new(by_datacenter))
    }
}

/// A verifier per datacenter; a leaf goes to the one of the datacenter it names.
#[derive(Debug)]
struct ByDatacenter<V: ?Sized> {
    by_datacenter: BTreeMap<String, Arc<V>>,
    algorithms: WebPkiSupportedAlgorithms,
}

fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        std::io::Error::other(why),
    ))))
}

impl<V: ?Sized> ByDatacenter<V> {
    fn new(by_datacenter: BTreeMap<String, Arc<V>>) -> Self {
        Self {
            by_datacenter,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// The verifier for `leaf`: the one of the datacenter its SPIFFE id names.
    fn for_leaf(&self, leaf: &CertificateDer<'_>) -> Result<&V, rustls::Error> {
        let id = leaf_identity(leaf).map_err(|e| refused(e.to_string()))?;
        self.by_datacenter
            .get(&id.datacenter)
            .map(|v| &**v)
            .ok_or_else(|| {
                refused(format!(
                    "{} is of datacenter {}, and no root of {} is trusted",
                    id.uri(),
                    id.datacenter,
                    id.datacenter
                ))
            })
    }
}

/// The signature checks both verifier traits ask for: the same on either side, and not
/// about roots at all (the leaf was judged by then).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for ByDatacenter<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.for_leaf(end_entity)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    signature_checks!();
}

impl ClientCertVerifier for ByDatacenter<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; a mesh client has one leaf and presents it anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.for_leaf(end_entity)?
            .verify_client_cert(end_entity, intermediates, now)
    }

    signature_checks!();
}
