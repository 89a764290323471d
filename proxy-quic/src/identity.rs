//! Service identity: the trust domain and SPIFFE ids, in Consul's form
//! `spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`.

use std::fmt;

/// Why a trust domain or SPIFFE id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The cluster id cannot make a trust domain.
    #[error(
        "cluster id {0:?} cannot name a trust domain: use lower-case letters, digits, '-' and '.'"
    )]
    BadTrustDomain(String),
    /// The text is not a SPIFFE id of a murmur service.
    #[error("{uri:?} is not a service identity: {why}")]
    NotAServiceId {
        /// The text given.
        uri: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// The trust domain of a cluster: `<cluster-id>.consul`, as Consul names its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain of the cluster `cluster_id`.
    pub fn of_cluster(cluster_id: &str) -> Result<Self, IdentityError> {
        let ok = !cluster_id.is_empty()
            && cluster_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !cluster_id.starts_with(['-', '.'])
            && !cluster_id.ends_with(['-', '.']);
        if !ok {
            return Err(IdentityError::BadTrustDomain(cluster_id.to_owned()));
        }
        Ok(Self(format!("{cluster_id}.consul")))
    }

    /// The domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service's identity: what its leaf certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceId {
    /// Trust domain (host part of the URI).
    pub trust_domain: String,
    /// Datacenter.
    pub datacenter: String,
    /// Logical service name.
    pub service: String,
}

/// Service names and datacenters may use what DNS labels and Consul names use.
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl ServiceId {
    /// The identity of `service` in `datacenter` of `trust_domain`.
    pub fn new(
        trust_domain: &TrustDomain,
        datacenter: &str,
        service: &str,
    ) -> Result<Self, IdentityError> {
        let id = Self {
            trust_domain: trust_domain.as_str().to_owned(),
            datacenter: datacenter.to_owned(),
            service: service.to_owned(),
        };
        if !is_name(datacenter) || !is_name(service) {
            return Err(IdentityError::NotAServiceId {
                uri: id.uri(),
                why: "service and datacenter names are 1 to 63 letters, digits, '-', '_' or '.'",
            });
        }
        Ok(id)
    }

    /// The SPIFFE URI.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/ns/default/dc/{}/svc/{}",
            self.trust_domain, self.datacenter, self.service
        )
    }

    /// The DNS name in the leaf next to the URI, so a client can check a server with the
    /// ordinary name verification of TLS: `<service>.svc.<dc>.<trust-domain>`.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.svc.{}.{}",
            self.service, self.datacenter, self.trust_domain
        )
    }

    /// Parses a SPIFFE URI of a murmur (or Consul) service identity.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let refuse = |why| IdentityError::NotAServiceId {
            uri: uri.to_owned(),
            why,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| refuse("it does not start with spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| refuse("it has no path"))?;
        let parts: Vec<&str> = path.split('/').collect();
        let ["ns", namespace, "dc", datacenter, "svc", service] = parts[..] else {
            return Err(refuse("the path is not /ns/<ns>/dc/<dc>/svc/<service>"));
        };
        if namespace != "default" {
            return Err(refuse("murmur has only the namespace \"default\""));
        }
        if trust_domain.is_empty() || !is_name(datacenter) || !is_name(service) {
            return Err(refuse(
                "an empty or malformed trust domain, datacenter or service",
            ));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            datacenter: datacenter.to_owned(),
            service: service.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn consuls_form_round_trips() {
        let td = TrustDomain::of_cluster("murmur").unwrap();
        let id = ServiceId::new(&td, "dc1", "web").unwrap();
        assert_eq!(id.uri(), "spiffe://murmur.consul/ns/default/dc/dc1/svc/web");
        assert_eq!(id.dns_name(), "web.svc.dc1.murmur.consul");
        assert_eq!(ServiceId::parse(&id.uri()).unwrap(), id);
    }

    #[test]
    fn malformed_ids_say_why() {
        for (uri, why) in [
            ("https://x.consul/ns/default/dc/dc1/svc/web", "spiffe://"),
            ("spiffe://x.consul", "no path"),
            ("spiffe://x.consul/ns/default/dc/dc1/svc", "path is not"),
            ("spiffe://x.consul/ns/other/dc/dc1/svc/web", "namespace"),
            (
                "spiffe://x.consul/ns/default/dc/dc1/svc/web/extra",
                "path is not",
            ),
            ("spiffe:///ns/default/dc/dc1/svc/web", "malformed"),
            ("spiffe://x.consul/ns/default/dc/dc1/svc/we b", "malformed"),
        ] {
            let err = ServiceId::parse(uri).unwrap_err().to_string();
            assert!(err.contains(why), "{uri}: {err}");
        }
        assert!(TrustDomain::of_cluster("Prod").is_err());
        assert!(TrustDomain::of_cluster("-x").is_err());
        assert!(TrustDomain::of_cluster("").is_err());
    }

    proptest! {
        /// Parsing never panics, and what parses prints back as the same text.
        #[test]
        fn parse_is_total_and_faithful(uri in "spiffe://[a-z.]{0,8}(/[a-z0-9]{0,6}){0,7}") {
            if let Ok(id) = ServiceId::parse(&uri) {
                prop_assert_eq!(id.uri(), uri);
            }
        }
    }
}
