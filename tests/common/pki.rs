//! Test certificates as PEM files: a CA, a server certificate for 127.0.0.1 and a client
//! certificate it signed, and a client certificate from another CA.

#![allow(dead_code)] // each test file uses a different part of it

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};

/// A CA, the agent's certificate (for 127.0.0.1) and a client certificate it signed, and a
/// client certificate from a CA the agent does not know, as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let ca = pki.ca("ca");
        pki.leaf("server", &ca, ExtendedKeyUsagePurpose::ServerAuth);
        pki.leaf("client", &ca, ExtendedKeyUsagePurpose::ClientAuth);
        let other = pki.ca("other-ca");
        pki.leaf("stranger", &other, ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn ca(&self, name: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = named(name);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        Issuer::new(params, key)
    }

    fn leaf(&self, name: &str, ca: &Issuer<'_, KeyPair>, usage: ExtendedKeyUsagePurpose) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![usage];
        // A subject of its own: one equal to the CA's makes OpenSSL take the leaf for
        // self-signed.
        params.distinguished_name = named(name);
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn named(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}
