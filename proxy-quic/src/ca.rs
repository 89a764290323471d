//! The built-in certificate authority: an ECDSA P-256 root, and leaf certificates that carry a
//! service's SPIFFE id (URI SAN) and its DNS name, for both ends of mutual TLS.
//!
//! Time comes in as unix seconds and serial numbers as bytes from the caller, so what a
//! certificate says is decided by the caller; only key generation draws from the operating
//! system (through `ring`): a private key must never be reproducible, not even in a test.

use murmur_catalog::CaRoot;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use time::OffsetDateTime;

use crate::identity::{ServiceId, TrustDomain};

/// How long a root is valid: ten years, as Consul's built-in CA.
pub const ROOT_LIFETIME_S: u64 = 10 * 365 * 24 * 3600;
/// Default leaf lifetime: 72 hours, as Consul's.
pub const DEFAULT_LEAF_TTL_S: u64 = 72 * 3600;
/// Certificates start this much before "now", so a peer whose clock is a little behind
/// accepts them at once.
const BACKDATE_S: u64 = 60;

/// What went wrong with CA material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused (bad key, bad parameters).
    #[error("certificate authority: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PEM file that holds no certificate or key of the expected kind.
    #[error("{what} is not valid: {why}")]
    Invalid {
        /// Which material.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// A time outside what certificates can say.
    #[error("time {0} is out of range for a certificate")]
    Time(u64),
}

fn at(unix_s: u64) -> Result<OffsetDateTime, CaError> {
    i64::try_from(unix_s)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(CaError::Time(unix_s))
}

/// Consul's form of a key id: colon-separated hex.
fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A signing authority: a root certificate and its private key.
pub struct Authority {
    root: CaRoot,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("root", &self.root.id)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new root for `trust_domain`, created at `now_ms` (unix milliseconds: the creation
    /// time orders roots, so two rotations within a second must still be told apart);
    /// `serial` makes its serial number.
    pub fn generate(
        trust_domain: &TrustDomain,
        now_ms: u64,
        serial: [u8; 16],
    ) -> Result<Self, CaError> {
        let now_s = now_ms / 1000;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("murmur CA {}", &colon_hex(&serial)[..11]),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        params.not_before = at(now_s.saturating_sub(BACKDATE_S))?;
        params.not_after = at(now_s + ROOT_LIFETIME_S)?;
        params.serial_number = Some(SerialNumber::from_slice(&positive(serial)));
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Self::from_pem(&cert.pem(), &key_pem, now_ms)
    }

    /// Loads a root certificate and its key (PEM), as `murmur ca init` wrote them;
    /// `created_ms` orders it among the cluster's roots.
    pub fn from_pem(cert_pem: &str, key_pem: &str, created_ms: u64) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Invalid {
            what: "the CA key",
            why: e.to_string(),
        })?;
        let der = pem_der(cert_pem, "the CA certificate")?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Invalid {
                what: "the CA certificate",
                why: e.to_string(),
            })?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Invalid {
                what: "the CA key",
                why: "it does not belong to the CA certificate".into(),
            });
        }
        let key_id = CertificateParams::default().key_identifier(&key);
        let validity = x509.validity();
        let root = CaRoot {
            id: colon_hex(&key_id),
            name: x509
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or("murmur CA")
                .to_owned(),
            cert_pem: cert_pem.to_owned(),
            created_ms,
            not_before_s: u64::try_from(validity.not_before.timestamp()).unwrap_or(0),
            not_after_s: u64::try_from(validity.not_after.timestamp()).unwrap_or(0),
        };
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            root,
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The root certificate, as it replicates.
    pub fn root(&self) -> &CaRoot {
        &self.root
    }

    /// The private key, PEM (for `murmur ca init` to write; never replicated).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs a leaf for `id` over the public key `public_key_der` (SubjectPublicKeyInfo, DER),
    /// valid from `now_s` for `ttl_s` (never past the root's own end).
    pub fn sign_leaf(
        &self,
        id: &ServiceId,
        public_key_der: &[u8],
        now_s: u64,
        ttl_s: u64,
        serial: [u8; 16],
    ) -> Result<Leaf, CaError> {
        let public_key =
            SubjectPublicKeyInfo::from_der(public_key_der).map_err(|e| CaError::Invalid {
                what: "the leaf's public key",
                why: e.to_string(),
            })?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, id.service.clone());
        params.distinguished_name = name;
        params.subject_alt_names = vec![
            SanType::URI(id.uri().try_into()?),
            SanType::DnsName(id.dns_name().try_into()?),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let valid_after = now_s.saturating_sub(BACKDATE_S);
        let valid_before = (now_s + ttl_s).min(self.root.not_after_s);
        params.not_before = at(valid_after)?;
        params.not_after = at(valid_before)?;
        let serial = positive(serial);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            serial: colon_hex(&serial),
            valid_after_s: valid_after,
            valid_before_s: valid_before,
            root_id: self.root.id.clone(),
        })
    }
}

/// A serial number must be positive: clear the top bit.
fn positive(mut serial: [u8; 16]) -> [u8; 16] {
    serial[0] &= 0x7f;
    serial
}

/// The DER inside the first PEM block of `pem`.
pub fn pem_der(pem_text: &str, what: &'static str) -> Result<Vec<u8>, CaError> {
    let block = ::pem::parse(pem_text).map_err(|e| CaError::Invalid {
        what,
        why: e.to_string(),
    })?;
    Ok(block.into_contents())
}

/// The service identity a leaf certificate (DER) claims: its one SPIFFE URI SAN. Whether the
/// certificate is genuine is the TLS handshake's business (chain to a trusted root, validity);
/// this only reads what it says.
pub fn leaf_identity(cert_der: &[u8]) -> Result<ServiceId, CaError> {
    let invalid = |why: String| CaError::Invalid {
        what: "the peer certificate",
        why,
    };
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| invalid(e.to_string()))?;
    let sans = x509
        .subject_alternative_name()
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("it has no subject alternative names".into()))?;
    let mut uris = sans.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => ServiceId::parse(uri).map_err(|e| invalid(e.to_string())),
        (None, _) => Err(invalid("it carries no SPIFFE URI".into())),
        (Some(_), Some(_)) => Err(invalid("it carries more than one URI".into())),
    }
}

/// A signed leaf certificate (its key stays with whoever asked for it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Serial number, colon hex.
    pub serial: String,
    /// Start of validity, unix seconds.
    pub valid_after_s: u64,
    /// End of validity, unix seconds.
    pub valid_before_s: u64,
    /// The root that signed it.
    pub root_id: String,
}

/// When to replace a leaf valid from `valid_after_s` to `valid_before_s`: between 60% and 90%
/// of that span, placed by `jitter` in [0, 1) (from the caller's RNG), so leaves issued
/// together are not all renewed together, and a renewal that fails has time to be tried
/// again before the leaf expires.
pub fn renew_at(valid_after_s: u64, valid_before_s: u64, jitter: f64) -> u64 {
    let life = valid_before_s.saturating_sub(valid_after_s);
    let permille = 600 + (300.0 * jitter.clamp(0.0, 1.0)).round() as u64;
    valid_after_s + life.saturating_mul(permille) / 1000
}

/// A fresh key pair for a leaf: the private key (PEM) stays with the caller; the public key
/// (SubjectPublicKeyInfo, DER) goes to the signer.
pub fn leaf_key() -> Result<(String, Vec<u8>), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    Ok((key.serialize_pem(), key.subject_public_key_info()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000;

    fn authority() -> Authority {
        let td = TrustDomain::of_cluster("murmur").unwrap();
        Authority::generate(&td, NOW * 1000, [7; 16]).unwrap()
    }

    fn parse(pem_text: &str) -> Vec<u8> {
        pem_der(pem_text, "test certificate").unwrap()
    }

    #[test]
    fn a_leaf_carries_its_identity_and_chains_to_the_root() {
        let ca = authority();
        let td = TrustDomain::of_cluster("murmur").unwrap();
        let id = ServiceId::new(&td, "dc1", "web").unwrap();
        let (_key, public) = leaf_key().unwrap();
        let leaf = ca
            .sign_leaf(&id, &public, NOW, DEFAULT_LEAF_TTL_S, [1; 16])
            .unwrap();
        assert_eq!(leaf.valid_before_s - NOW, DEFAULT_LEAF_TTL_S);
        assert!(
            leaf.valid_after_s < NOW,
            "backdated for peers whose clocks lag"
        );
        assert_eq!(leaf.root_id, ca.root().id);

        let leaf_der = parse(&leaf.cert_pem);
        assert_eq!(leaf_identity(&leaf_der).unwrap(), id);
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let root_der = parse(&ca.root().cert_pem);
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        cert.verify_signature(Some(root.public_key()))
            .expect("signed by the root");
        assert_eq!(cert.issuer(), root.subject());
        assert!(root.is_ca());
        let dns: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(dns, ["web.svc.dc1.murmur.consul"]);
    }

    #[test]
    fn renewal_falls_between_60_and_90_percent_of_the_life() {
        assert_eq!(renew_at(1_000, 2_000, 0.0), 1_600);
        assert_eq!(renew_at(1_000, 2_000, 0.5), 1_750);
        assert_eq!(renew_at(1_000, 2_000, 1.0), 1_900);
    }

    #[test]
    fn a_root_reloads_from_its_pem_and_refuses_a_foreign_key() {
        let ca = authority();
        let again = Authority::from_pem(&ca.root().cert_pem, ca.key_pem(), 5).unwrap();
        assert_eq!(again.root().id, ca.root().id);
        assert_eq!(again.root().not_after_s - NOW, ROOT_LIFETIME_S);
        let other = authority();
        let err = Authority::from_pem(&ca.root().cert_pem, other.key_pem(), 5).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = Authority::from_pem("not pem", ca.key_pem(), 5).unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
    }

    #[test]
    fn a_leaf_never_outlives_its_root() {
        let ca = authority();
        let td = TrustDomain::of_cluster("murmur").unwrap();
        let id = ServiceId::new(&td, "dc1", "db").unwrap();
        let (_, public) = leaf_key().unwrap();
        let late = ca.root().not_after_s - 10;
        let leaf = ca
            .sign_leaf(&id, &public, late, DEFAULT_LEAF_TTL_S, [2; 16])
            .unwrap();
        assert_eq!(leaf.valid_before_s, ca.root().not_after_s);
        assert!(ca.sign_leaf(&id, b"junk", NOW, 60, [3; 16]).is_err());
    }

    #[test]
    fn certificates_without_one_spiffe_uri_are_refused() {
        let ca = authority();
        // The root has a trust-domain URI, which is no service id.
        let err = leaf_identity(&parse(&ca.root().cert_pem)).unwrap_err();
        assert!(err.to_string().contains("not a service identity"), "{err}");
        assert!(leaf_identity(b"garbage").is_err());
    }
}
