//! The agent's settings: flags merged over the optional JSON config file, checked once at start.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use murmur_catalog::Action;
use murmur_federation::gateways::DEFAULT_GATEWAYS;
use serde::Deserialize;

use crate::cli::AgentArgs;
use crate::http::tls::{HttpsConfig, TlsFlags};

/// Default gossip port (serf's LAN port).
pub const DEFAULT_GOSSIP_PORT: u16 = 8301;
/// Default WAN gossip port (serf's WAN port).
pub const DEFAULT_WAN_PORT: u16 = 8302;
/// How long failed and left members stay listed by default (Consul's `reconnect_timeout`).
pub const DEFAULT_REAP_AFTER: Duration = Duration::from_secs(72 * 3600);
/// Where the DNS interface listens unless told otherwise (Consul's port).
pub const DEFAULT_DNS_ADDR: &str = "127.0.0.1:8600";
/// Lifetime of mesh leaf certificates (Consul's default).
pub const DEFAULT_LEAF_CERT_TTL: Duration = Duration::from_secs(72 * 3600);

/// The config file: the flags' names with `_`; unknown keys are an error, so typos surface.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node: Option<String>,
    bind: Option<String>,
    advertise: Option<String>,
    datacenter: Option<String>,
    cluster_id: Option<String>,
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    retry_join: Vec<String>,
    encrypt: Option<String>,
    data_dir: Option<PathBuf>,
    config_dir: Option<PathBuf>,
    http_addr: Option<String>,
    https_addr: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    tls_verify_incoming: bool,
    http_header_timeout: Option<String>,
    http_max_conns: Option<usize>,
    http_max_conns_per_client: Option<usize>,
    reap_after: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    enable_script_checks: bool,
    dns_addr: Option<String>,
    dns_domain: Option<String>,
    dns_ttl: Option<u32>,
    default_intention_policy: Option<String>,
    leaf_cert_ttl: Option<String>,
    ca_bootstrap: Option<bool>,
    ui: Option<bool>,
    #[serde(default)]
    acl_enabled: bool,
    acl_default_policy: Option<String>,
    acl_agent_token: Option<String>,
    #[serde(default)]
    wan_eligible: bool,
    bind_wan: Option<String>,
    advertise_wan: Option<String>,
    #[serde(default)]
    join_wan: Vec<String>,
    #[serde(default)]
    retry_join_wan: Vec<String>,
    wan_gateways: Option<usize>,
}

/// Resolved agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub datacenter: String,
    pub cluster_id: String,
    pub join: Vec<String>,
    pub retry_join: Vec<String>,
    pub encrypt: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub config_dir: Option<PathBuf>,
    pub http_addr: SocketAddr,
    /// `--https-addr` and the TLS files, when the API also serves HTTPS.
    pub https: Option<HttpsConfig>,
    /// `--http-header-timeout`.
    pub http_header_timeout: Duration,
    /// `--http-max-conns`; `None`: from the open-files limit, known once it is raised.
    pub http_max_conns: Option<usize>,
    /// `--http-max-conns-per-client`.
    pub http_max_conns_per_client: usize,
    pub tags: Vec<(String, String)>,
    pub reap_after: Duration,
    pub dev: bool,
    pub enable_script_checks: bool,
    pub dns_addr: SocketAddr,
    pub dns_domain: String,
    pub dns_ttl: u32,
    pub default_intention_policy: Action,
    pub leaf_cert_ttl: Duration,
    /// This agent may make its datacenter's CA root (`crate::connect::bootstrap`).
    pub ca_bootstrap: bool,
    /// `--ui`: serve the web UI at `/ui/`.
    pub ui: bool,
    /// `--acl-enabled`.
    pub acl_enabled: bool,
    /// `--acl-default-policy allow` (true) or `deny`.
    pub acl_default_allow: bool,
    /// `--acl-agent-token`.
    pub acl_agent_token: Option<String>,
    /// WAN settings, when this agent may serve as a gateway (`--wan-eligible`).
    pub wan: Option<WanConfig>,
}

/// How this agent serves as a WAN gateway when its datacenter selects it.
#[derive(Debug, Clone)]
pub struct WanConfig {
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub join: Vec<String>,
    pub retry_join: Vec<String>,
    /// How many gateways the datacenter runs (every agent must be given the same).
    pub gateways: usize,
}

impl AgentConfig {
    /// Merges flags over the file and fills defaults; errors say which setting is wrong.
    pub fn resolve(args: &AgentArgs) -> anyhow::Result<Self> {
        let mut file: FileConfig = match &args.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("config file {} is not valid", path.display()))?
            }
            None => FileConfig::default(),
        };
        let dev = args.dev;
        let default_ip = if dev {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let bind = match args.bind.clone().or(file.bind.take()) {
            Some(text) => parse_addr(&text, DEFAULT_GOSSIP_PORT).context("--bind")?,
            None => SocketAddr::new(default_ip, DEFAULT_GOSSIP_PORT),
        };
        let advertise = match args.advertise.clone().or(file.advertise.take()) {
            Some(text) => parse_addr(&text, bind.port()).context("--advertise")?,
            None if bind.ip().is_unspecified() => bail!(
                "--bind {bind} listens on every interface, so peers need to be told where to reach this agent: \
                 give --advertise ADDR (or bind to one address)"
            ),
            None => bind,
        };
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            bail!(
                "--advertise {advertise} is not an address peers can reach: give a concrete IP and port"
            );
        }
        let wan = WanConfig::resolve(args, &file, bind, advertise)?;
        let http_addr = args
            .http_addr
            .clone()
            .or(file.http_addr)
            .unwrap_or_else(|| murmur_proxy::agent_api::DEFAULT_HTTP_ADDR.into());
        let http_addr = parse_addr(&http_addr, 8500).context("--http-addr")?;
        let https = HttpsConfig::from_flags(TlsFlags {
            https_addr: args
                .https_addr
                .clone()
                .or(file.https_addr)
                .map(|addr| parse_addr(&addr, 8501).context("--https-addr"))
                .transpose()?,
            cert_file: args.tls_cert_file.clone().or(file.tls_cert_file),
            key_file: args.tls_key_file.clone().or(file.tls_key_file),
            ca_file: args.tls_ca_file.clone().or(file.tls_ca_file),
            verify_incoming: args.tls_verify_incoming || file.tls_verify_incoming,
        })?;
        let http_header_timeout = match args
            .http_header_timeout
            .clone()
            .or(file.http_header_timeout)
        {
            Some(text) => crate::duration::parse(&text)
                .filter(|d| !d.is_zero())
                .with_context(|| {
                    format!("--http-header-timeout {text:?} is not a positive duration such as 10s")
                })?,
            None => crate::http::serve::DEFAULT_HEADER_TIMEOUT,
        };
        let positive = |flag: &str, n: Option<usize>| match n {
            Some(0) => bail!("{flag} 0 would refuse every connection: give at least 1"),
            n => Ok(n),
        };
        let http_max_conns = positive(
            "--http-max-conns",
            args.http_max_conns.or(file.http_max_conns),
        )?;
        let http_max_conns_per_client = positive(
            "--http-max-conns-per-client",
            args.http_max_conns_per_client
                .or(file.http_max_conns_per_client),
        )?
        .unwrap_or(crate::http::serve::DEFAULT_MAX_CONNS_PER_CLIENT);
        let dns_addr = args
            .dns_addr
            .clone()
            .or(file.dns_addr)
            .unwrap_or_else(|| DEFAULT_DNS_ADDR.into());
        let dns_addr = parse_addr(&dns_addr, 8600).context("--dns-addr")?;
        let dns_domain = crate::dns::parse_domain(
            args.dns_domain
                .as_deref()
                .or(file.dns_domain.as_deref())
                .unwrap_or("consul"),
        )?;
        let dns_ttl = args.dns_ttl.or(file.dns_ttl).unwrap_or(0);
        let data_dir = args.data_dir.clone().or(file.data_dir);
        if data_dir.is_none() && !dev {
            bail!(
                "murmur agent needs --data-dir PATH to keep its identity and keys (or --dev for an in-memory agent)"
            );
        }
        let mut tags = file.tags;
        for tag in &args.tag {
            let (k, v) = tag
                .split_once('=')
                .with_context(|| format!("--tag {tag:?} must be KEY=VALUE"))?;
            tags.insert(k.to_owned(), v.to_owned());
        }
        let reap_after = match args.reap_after.clone().or(file.reap_after) {
            Some(text) => crate::duration::parse(&text)
                .filter(|d| !d.is_zero())
                .with_context(|| {
                    format!("--reap-after {text:?} is not a positive duration such as 72h or 30m")
                })?,
            None => DEFAULT_REAP_AFTER,
        };
        let default_intention_policy = match args
            .default_intention_policy
            .as_deref()
            .or(file.default_intention_policy.as_deref())
        {
            None if dev => Action::Allow,
            None | Some("deny") => Action::Deny,
            Some("allow") => Action::Allow,
            Some(other) => bail!("--default-intention-policy {other:?} must be allow or deny"),
        };
        let leaf_cert_ttl = match args.leaf_cert_ttl.clone().or(file.leaf_cert_ttl) {
            Some(text) => crate::duration::parse(&text)
                .filter(|d| *d >= Duration::from_secs(60))
                .with_context(|| {
                    format!(
                        "--leaf-cert-ttl {text:?} is not a duration of at least 1m, such as 72h"
                    )
                })?,
            None => DEFAULT_LEAF_CERT_TTL,
        };
        let acl_default_allow = match args
            .acl_default_policy
            .as_deref()
            .or(file.acl_default_policy.as_deref())
        {
            None | Some("allow") => true,
            Some("deny") => false,
            Some(other) => bail!("--acl-default-policy {other:?} must be allow or deny"),
        };
        let join = if args.join.is_empty() {
            file.join
        } else {
            args.join.clone()
        };
        let retry_join = if args.retry_join.is_empty() {
            file.retry_join
        } else {
            args.retry_join.clone()
        };
        Ok(Self {
            node: args.node.clone().or(file.node).unwrap_or_else(hostname),
            bind,
            advertise,
            datacenter: args
                .datacenter
                .clone()
                .or(file.datacenter)
                .unwrap_or_else(|| "dc1".into()),
            cluster_id: args
                .cluster_id
                .clone()
                .or(file.cluster_id)
                .unwrap_or_else(|| "murmur".into()),
            join,
            retry_join,
            encrypt: args.encrypt.clone().or(file.encrypt),
            data_dir,
            config_dir: args.config_dir.clone().or(file.config_dir),
            http_addr,
            https,
            http_header_timeout,
            http_max_conns,
            http_max_conns_per_client,
            tags: tags.into_iter().collect(),
            reap_after,
            dev,
            enable_script_checks: args.enable_script_checks || file.enable_script_checks,
            dns_addr,
            dns_domain,
            dns_ttl,
            default_intention_policy,
            leaf_cert_ttl,
            ca_bootstrap: args.ca_bootstrap.or(file.ca_bootstrap).unwrap_or(true),
            ui: args.ui.or(file.ui).unwrap_or(true),
            acl_enabled: args.acl_enabled || file.acl_enabled,
            acl_default_allow,
            acl_agent_token: args.acl_agent_token.clone().or(file.acl_agent_token),
            wan,
        })
    }
}

impl WanConfig {
    /// The WAN settings of `--wan-eligible` (none without it; WAN flags without it are an
    /// error, not silently ignored).
    fn resolve(
        args: &AgentArgs,
        file: &FileConfig,
        bind: SocketAddr,
        advertise: SocketAddr,
    ) -> anyhow::Result<Option<Self>> {
        let pick = |flag: &[String], file: &[String]| {
            if flag.is_empty() {
                file.to_vec()
            } else {
                flag.to_vec()
            }
        };
        let join = pick(&args.join_wan, &file.join_wan);
        let retry_join = pick(&args.retry_join_wan, &file.retry_join_wan);
        let bind_text = args.bind_wan.clone().or(file.bind_wan.clone());
        let advertise_text = args.advertise_wan.clone().or(file.advertise_wan.clone());
        let gateways = args.wan_gateways.or(file.wan_gateways);
        if !(args.wan_eligible || file.wan_eligible) {
            let given = [
                (!join.is_empty(), "--join-wan"),
                (!retry_join.is_empty(), "--retry-join-wan"),
                (bind_text.is_some(), "--bind-wan"),
                (advertise_text.is_some(), "--advertise-wan"),
                (gateways.is_some(), "--wan-gateways"),
            ];
            if let Some((_, flag)) = given.iter().find(|(given, _)| *given) {
                bail!("{flag} is for WAN gateways: add --wan-eligible (or drop {flag})");
            }
            return Ok(None);
        }
        let bind = match bind_text {
            Some(text) => parse_addr(&text, DEFAULT_WAN_PORT).context("--bind-wan")?,
            None => SocketAddr::new(bind.ip(), DEFAULT_WAN_PORT),
        };
        let advertise = match advertise_text {
            Some(text) => parse_addr(&text, bind.port()).context("--advertise-wan")?,
            None if bind.ip().is_unspecified() => SocketAddr::new(advertise.ip(), bind.port()),
            None => bind,
        };
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            bail!(
                "--advertise-wan {advertise} is not an address other datacenters can reach: give a concrete IP and port"
            );
        }
        let gateways = gateways.unwrap_or(DEFAULT_GATEWAYS);
        if gateways == 0 {
            bail!("--wan-gateways 0 would link no datacenter: give 1 or more (default 3)");
        }
        Ok(Some(Self {
            bind,
            advertise,
            join,
            retry_join,
            gateways,
        }))
    }
}

/// Parses `ip`, `ip:port`, `[v6]:port`; a missing port gets `default_port`.
pub fn parse_addr(text: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    bail!("{text:?} is not an address: use IP or IP:PORT")
}

/// Resolves join addresses, which may be host names; the port defaults to 8301.
pub async fn resolve_seeds(addrs: &[String]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for text in addrs {
        if let Ok(addr) = parse_addr(text, DEFAULT_GOSSIP_PORT) {
            found.push(addr);
            continue;
        }
        let with_port = if text.contains(':') {
            text.clone()
        } else {
            format!("{text}:{DEFAULT_GOSSIP_PORT}")
        };
        match tokio::net::lookup_host(&with_port).await {
            Ok(mut addrs) => match addrs.next() {
                Some(addr) => found.push(addr),
                None => errors.push(format!("{text}: the name has no address")),
            },
            Err(err) => errors.push(format!("{text}: cannot resolve ({err})")),
        }
    }
    (found, errors)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "murmur".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_defaults_to_loopback_in_memory() {
        let args = AgentArgs {
            dev: true,
            ..Default::default()
        };
        let c = AgentConfig::resolve(&args).unwrap();
        assert_eq!(c.bind, "127.0.0.1:8301".parse().unwrap());
        assert_eq!(c.advertise, c.bind);
        assert!(c.data_dir.is_none());
    }

    #[test]
    fn missing_data_dir_and_wildcard_bind_are_explained() {
        let err = AgentConfig::resolve(&AgentArgs::default()).unwrap_err();
        assert!(format!("{err:#}").contains("--advertise"), "{err:#}");
        let args = AgentArgs {
            bind: Some("127.0.0.1".into()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(&args).unwrap_err();
        assert!(format!("{err:#}").contains("--data-dir"), "{err:#}");
    }

    #[test]
    fn flags_win_over_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{"node":"file","datacenter":"east","tags":{"rack":"r1"}}"#,
        )
        .unwrap();
        let args = AgentArgs {
            dev: true,
            config_file: Some(path.clone()),
            node: Some("flag".into()),
            ..Default::default()
        };
        let c = AgentConfig::resolve(&args).unwrap();
        assert_eq!((c.node.as_str(), c.datacenter.as_str()), ("flag", "east"));
        assert_eq!(c.tags, vec![("rack".to_owned(), "r1".to_owned())]);
        std::fs::write(&path, r#"{"nodename":"x"}"#).unwrap();
        let err = AgentConfig::resolve(&args).unwrap_err();
        assert!(format!("{err:#}").contains("nodename"), "{err:#}");
    }

    #[test]
    fn wan_flags_need_wan_eligible_and_default_from_the_lan_ones() {
        let args = AgentArgs {
            dev: true,
            join_wan: vec!["10.0.0.9".into()],
            ..Default::default()
        };
        let err = format!("{:#}", AgentConfig::resolve(&args).unwrap_err());
        assert!(
            err.contains("--join-wan") && err.contains("--wan-eligible"),
            "{err}"
        );
        let args = AgentArgs {
            wan_eligible: true,
            ..args
        };
        let wan = AgentConfig::resolve(&args).unwrap().wan.unwrap();
        assert_eq!(wan.bind, "127.0.0.1:8302".parse().unwrap());
        assert_eq!(wan.advertise, wan.bind);
        assert_eq!(wan.gateways, DEFAULT_GATEWAYS);
        let args = AgentArgs {
            bind: Some("0.0.0.0".into()),
            advertise: Some("10.1.2.3".into()),
            data_dir: Some("/nowhere".into()),
            wan_eligible: true,
            ..Default::default()
        };
        let wan = AgentConfig::resolve(&args).unwrap().wan.unwrap();
        assert_eq!(wan.advertise, "10.1.2.3:8302".parse().unwrap());
        let args = AgentArgs {
            wan_gateways: Some(0),
            ..args
        };
        let err = format!("{:#}", AgentConfig::resolve(&args).unwrap_err());
        assert!(err.contains("--wan-gateways"), "{err}");
    }

    #[test]
    fn addresses_take_default_ports() {
        assert_eq!(
            parse_addr("10.0.0.1", 8301).unwrap(),
            "10.0.0.1:8301".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]:9", 1).unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert!(parse_addr("nope", 1).is_err());
    }

    #[test]
    fn reap_after_takes_go_durations() {
        let args = AgentArgs {
            dev: true,
            reap_after: Some("30m".into()),
            ..Default::default()
        };
        assert_eq!(
            AgentConfig::resolve(&args).unwrap().reap_after,
            Duration::from_secs(1800)
        );
        let args = AgentArgs {
            dev: true,
            reap_after: Some("soon".into()),
            ..Default::default()
        };
        assert!(format!("{:#}", AgentConfig::resolve(&args).unwrap_err()).contains("--reap-after"));
    }
}
