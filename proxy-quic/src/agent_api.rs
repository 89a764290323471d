//! How clients reach an agent's HTTP API: the CLI, the sidecars and the native SDK all find
//! the address, the ACL token and the TLS settings the same way, under murmur's environment
//! names and Consul's (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_SSL`,
//! `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`, `CONSUL_HTTP_SSL_VERIFY`), so
//! scripts written for Consul work unchanged.

use std::path::{Path, PathBuf};

/// Where Consul's clients look first, and so murmur's.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// What was wrong with the settings for reaching an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    /// A certificate or key file could not be read or holds nothing usable.
    #[error("cannot use {what} {path} (given by {given_by}): {why}")]
    File {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The flag or variable that named it.
        given_by: &'static str,
        /// What went wrong.
        why: String,
    },
    /// A client certificate without its key, or the other way round.
    #[error(
        "a client certificate needs its key and the key its certificate: give both --client-cert and --client-key (MURMUR_CLIENT_CERT and MURMUR_CLIENT_KEY)"
    )]
    HalfIdentity,
    /// The token cannot travel in a header.
    #[error("the ACL token has characters an HTTP header cannot carry")]
    BadToken,
    /// A boolean setting that is not one.
    #[error("{name}={value:?} is not a boolean: use true or false")]
    NotABool {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// The HTTP client itself could not be made.
    #[error("cannot make an HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Everything a client needs to reach one agent's HTTP API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentApiSettings {
    /// `host:port`, or a URL whose scheme says `http` or `https`.
    pub addr: String,
    /// The ACL token sent in `X-Consul-Token`.
    pub token: Option<String>,
    /// Speak HTTPS to an address given without a scheme.
    pub ssl: bool,
    /// The CA that signed the agent's certificate; the system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for agents that verify incoming connections.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key.
    pub client_key: Option<PathBuf>,
    /// Check the agent's certificate (turned off only by `*_HTTP_SSL_VERIFY=false`).
    pub verify: bool,
}

/// An agent's HTTP API, ready to be asked.
#[derive(Debug, Clone)]
pub struct AgentApi {
    /// The base URL, such as `https://127.0.0.1:8501`.
    pub base: String,
    /// A client carrying the token and the TLS settings.
    pub http: reqwest::Client,
}

/// The value of the first of `names` set to something non-empty in the environment.
pub fn env_var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// A boolean as Go's `strconv.ParseBool` reads it, which is how Consul reads its boolean
/// parameters and environment variables (clients such as python-consul send `True`).
pub fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl AgentApiSettings {
    /// The settings the environment gives, murmur's names first and Consul's second; `addr`,
    /// when given, wins over the environment's address.
    pub fn from_env(addr: Option<&str>) -> Result<Self, AgentApiError> {
        let path = |names: &[&str]| env_var(names).map(PathBuf::from);
        let boolean = |name: &'static str, consul: &'static str| match env_var(&[name, consul]) {
            None => Ok(None),
            Some(value) => go_bool(&value)
                .map(Some)
                .ok_or(AgentApiError::NotABool { name, value }),
        };
        Ok(Self {
            addr: addr
                .map(str::to_owned)
                .or_else(|| env_var(&["MURMUR_HTTP_ADDR", "CONSUL_HTTP_ADDR"]))
                .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned()),
            token: env_var(&["MURMUR_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"]),
            ssl: boolean("MURMUR_HTTP_SSL", "CONSUL_HTTP_SSL")?.unwrap_or(false),
            ca_file: path(&["MURMUR_CACERT", "CONSUL_CACERT"]),
            client_cert: path(&["MURMUR_CLIENT_CERT", "CONSUL_CLIENT_CERT"]),
            client_key: path(&["MURMUR_CLIENT_KEY", "CONSUL_CLIENT_KEY"]),
            verify: boolean("MURMUR_HTTP_SSL_VERIFY", "CONSUL_HTTP_SSL_VERIFY")?.unwrap_or(true),
        })
    }

    /// The base URL: the address's own scheme if it has one, else `https` when `ssl` is set.
    pub fn base_url(&self) -> String {
        let addr = self.addr.trim_end_matches('/');
        if addr.contains("://") {
            addr.to_owned()
        } else if self.ssl {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        }
    }

    /// The API at these settings, its client carrying the token and trusting what they say.
    pub fn connect(&self) -> Result<AgentApi, AgentApiError> {
        let base = self.base_url();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(token)
                .map_err(|_| AgentApiError::BadToken)?;
            value.set_sensitive(true);
            headers.insert("X-Consul-Token", value);
        }
        let mut http = reqwest::Client::builder()
            .default_headers(headers)
            .tls_built_in_root_certs(base.starts_with("https://") && self.ca_file.is_none());
        if let Some(path) = &self.ca_file {
            let pem = read(
                path,
                "the CA certificate file",
                "--ca-file or MURMUR_CACERT",
            )?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| AgentApiError::File {
                    what: "the CA certificate file",
                    path: path.clone(),
                    given_by: "--ca-file or MURMUR_CACERT",
                    why: e.to_string(),
                })?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        match (&self.client_cert, &self.client_key) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                let mut pem = read(cert, "the client certificate", "--client-cert")?;
                pem.push(b'\n');
                pem.extend(read(key, "the client key", "--client-key")?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| AgentApiError::File {
                        what: "the client certificate and key",
                        path: cert.clone(),
                        given_by: "--client-cert and --client-key",
                        why: e.to_string(),
                    })?;
                http = http.identity(identity);
            }
            _ => return Err(AgentApiError::HalfIdentity),
        }
        if !self.verify {
            http = http.danger_accept_invalid_certs(true);
        }
        Ok(AgentApi {
            base,
            http: http.build()?,
        })
    }
}

fn read(path: &Path, what: &'static str, given_by: &'static str) -> Result<Vec<u8>, AgentApiError> {
    std::fs::read(path).map_err(|e| AgentApiError::File {
        what,
        path: path.to_owned(),
        given_by,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str, ssl: bool) -> AgentApiSettings {
        AgentApiSettings {
            addr: addr.into(),
            ssl,
            verify: true,
            ..AgentApiSettings::default()
        }
    }

    #[test]
    fn the_scheme_comes_from_the_address_or_the_ssl_setting() {
        assert_eq!(
            at("127.0.0.1:8500", false).base_url(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            at("127.0.0.1:8501", true).base_url(),
            "https://127.0.0.1:8501"
        );
        assert_eq!(at("https://h:8501/", false).base_url(), "https://h:8501");
        assert_eq!(at("http://h:8500", true).base_url(), "http://h:8500");
    }

    #[test]
    fn go_booleans_are_what_strconv_parse_bool_takes() {
        for yes in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(go_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(go_bool(no), Some(false), "{no}");
        }
        for neither in ["", "yes", "tRUE", "2"] {
            assert_eq!(go_bool(neither), None, "{neither}");
        }
    }

    #[test]
    fn bad_files_and_half_identities_are_refused_naming_what_to_fix() {
        let missing = AgentApiSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..at("127.0.0.1:8501", true)
        };
        let err = missing.connect().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/ca.pem") && err.contains("MURMUR_CACERT"),
            "{err}"
        );

        let half = AgentApiSettings {
            client_cert: Some("/tmp/cert.pem".into()),
            ..at("127.0.0.1:8501", true)
        };
        let err = half.connect().unwrap_err().to_string();
        assert!(err.contains("--client-key"), "{err}");

        let token = AgentApiSettings {
            token: Some("bad\ntoken".into()),
            ..at("127.0.0.1:8500", false)
        };
        assert!(matches!(token.connect(), Err(AgentApiError::BadToken)));
    }
}
