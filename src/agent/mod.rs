//! `murmur agent`: binds the sockets, builds the membership core, serves the HTTP API, joins,
//! and leaves gracefully on SIGINT/SIGTERM or `PUT /v1/agent/leave`.

pub mod config;
mod coordinates;
pub mod persist;
pub mod pool;
pub mod runtime;
mod shed;
mod store;
mod stream;
mod tethers;
mod unreachable;
pub mod view;
pub mod wan;
pub mod watchers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use murmur_catalog::{NodeRecord, Replica, ReplicaConfig};
use murmur_gossip::{GossipConfig, IdentityFields, Keyring, NodeIdentity, PoolMember, SecretKey};
use rand::RngExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Notify;

use self::config::{AgentConfig, resolve_seeds};
use self::persist::DataDir;
use self::runtime::Agent;
use self::store::{Persister, Store};
use crate::checks::Checks;
use crate::cli::AgentArgs;

/// How long a leaving agent keeps gossiping so its leave reaches everyone.
pub(crate) const LEAVE_PROPAGATION: Duration = Duration::from_secs(1);
/// When an agent drops its mappings of the code it ran to start (`shed`): it has parsed its
/// flags, opened its data, bound its listeners and joined by then.
const SHED_STARTUP_CODE_AFTER: Duration = Duration::from_secs(10);
/// Longest wait between `--retry-join` attempts.
const RETRY_JOIN_MAX_WAIT: Duration = Duration::from_secs(30);

/// Runs the agent until it is told to leave.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::resolve(&args)?;
    let nofile = crate::http::serve::raise_nofile_limit();
    let data = config.data_dir.as_deref().map(DataDir::open).transpose()?;
    let keyring = load_keyring(&config, data.as_ref())?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_millis() as u64;
    let fresh_id: u64 = rand::rng().random();
    let (node_id, generation) = match &data {
        Some(data) => (data.node_id(fresh_id)?, data.next_generation(now_ms)?),
        None => (fresh_id, now_ms),
    };
    let identity: NodeIdentity = IdentityFields {
        name: config.node.as_str().into(),
        node_id,
        generation,
        addr: config.advertise,
        datacenter: config.datacenter.as_str().into(),
        tags: config.tags.clone(),
    }
    .into();
    let gateway = config
        .wan
        .as_ref()
        .map(|wan| wan::Gateway::new(&config, wan, &identity))
        .transpose()?;
    let encrypted = keyring.is_encrypted();
    for warning in insecure_settings(&config, encrypted) {
        tracing::warn!("{warning}");
    }
    let gossip = GossipConfig {
        reap_after: config.reap_after,
        ..GossipConfig::lan(&config.cluster_id)
    };
    let definitions = match &config.config_dir {
        Some(dir) => crate::services::load_dir(dir)?,
        None => Vec::new(),
    };
    let mut check_definitions = Vec::new();
    for definition in &definitions {
        let checks = definition
            .check_definitions(config.enable_script_checks)
            .map_err(|why| anyhow::anyhow!("--config-dir: {why}"))?;
        check_definitions.extend(checks);
    }
    let check_store = config.data_dir.as_deref().map(DataDir::open).transpose()?;
    let persisted_checks = Checks::persisted(check_store.as_ref())?;
    let mut node = PoolMember::new(identity.clone(), gossip, keyring, rand::make_rng())?;
    let (replica, persister) = open_replica(&config, &identity)?;
    node.set_replica(replica);
    node.set_now(runtime::wall_ms(), runtime::elapsed());
    let record = own_record(&config, node.replica().kept_own_record(), &definitions);
    let size = record.encoded_len();
    if size > murmur_catalog::MAX_RECORD_BYTES {
        bail!(
            "--config-dir: this agent's node record ({} services, {} checks) encodes to {size} \
             bytes, over the {} bytes one record may take (it travels whole to every agent): \
             spread the services over more agents, or register those not run here with \
             /v1/catalog/register",
            record.services.len(),
            record.checks.len(),
            murmur_catalog::MAX_RECORD_BYTES
        );
    }
    node.write(|replica, _| replica.set_own_record(Some(record)));

    let udp = UdpSocket::bind(config.bind)
        .await
        .map_err(|e| in_use(e, "gossip", config.bind, "--bind"))?;
    let tcp = TcpListener::bind(config.bind)
        .await
        .map_err(|e| in_use(e, "gossip", config.bind, "--bind"))?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| in_use(e, "HTTP", config.http_addr, "--http-addr"))?;
    let https = match &config.https {
        Some(https) => {
            let listener = TcpListener::bind(https.addr)
                .await
                .map_err(|e| in_use(e, "HTTPS", https.addr, "--https-addr"))?;
            Some((listener, https.acceptor()?))
        }
        None => None,
    };
    let agent = Agent::start(node, udp, tcp, data, persister)?;
    // One ACL cache for the HTTP API and DNS, emptied on every change of replicated data
    // outside the catalog and KV (ACL data among it; none subscribed with ACLs off).
    let acl = Arc::new(crate::http::Acl::new(
        config.acl_enabled,
        config.acl_default_allow,
        &config.datacenter,
        config.acl_enabled.then(|| {
            agent
                .watchers
                .subscribe(crate::http::blocking::Topic::Other)
        }),
    ));
    let dns = crate::dns::DnsSettings {
        domain: config.dns_domain.clone(),
        datacenter: config.datacenter.clone(),
        ttl: config.dns_ttl,
        acl: config.acl_enabled.then(|| acl.clone()),
        reader: Arc::new(murmur_acl::Authorizer::Management),
    };
    let forwarder = Arc::new(crate::forward::Forwarder::new(
        agent.clone(),
        &config.node,
        &config.datacenter,
        dns.clone(),
    ));
    let queries = Arc::new(crate::http::query::Executor::new(
        agent.clone(),
        forwarder.clone(),
        &config.datacenter,
    ));
    crate::dns::serve(
        agent.clone(),
        config.dns_addr,
        dns,
        forwarder.clone(),
        queries.clone(),
    )
    .await?;
    let checks = Checks::new(agent.clone(), check_store);
    // Checks registered through the API before a restart, then the config dir's (which win
    // on a shared id); statuses the record kept stay until each check's first result.
    for definition in persisted_checks.into_iter().chain(check_definitions) {
        let id = definition.id.clone();
        if let Err(err) = checks.register(definition, true).await {
            tracing::warn!(check = %id, %err, "check not restored");
        }
    }

    let connect = Arc::new(crate::connect::Connect::new(&config)?);
    let bootstrap = config.ca_bootstrap.then(|| connect.clone());
    agent.serve_peer_requests(crate::connect::SIGN_LEAF, connect.clone());
    connect
        .publish(&agent)
        .await
        .context("cannot publish this agent's CA root")?;

    let leave = Arc::new(Notify::new());
    let sidecar_store = config.data_dir.as_deref().map(DataDir::open).transpose()?;
    let sidecars = Arc::new(crate::connect::sidecars::Sidecars::new(
        config.http_addr,
        config.advertise.ip(),
        sidecar_store,
    ));
    let persisted_sidecars = sidecars.persisted()?;
    agent.serve_peer_requests(
        crate::ui::topology::PROXY_STATS,
        Arc::new(crate::http::ui::ProxyStats {
            sidecars: sidecars.clone(),
        }),
    );
    let api = crate::http::router(crate::http::ApiParts {
        agent: agent.clone(),
        leave: leave.clone(),
        config: config.clone(),
        checks,
        connect,
        sidecars: sidecars.clone(),
        queries,
        acl,
    });
    // Resolve the routes once: served as a plain `Router`, axum re-resolves every route for
    // each new connection (`with_state` per connection), 18.5 KiB per connection that lives as
    // long as the connection does — 185 MiB for 10,000 parked blocking queries (heaptrack).
    let api = api.with_state(());
    let limits = crate::http::serve::HttpLimits {
        header_timeout: config.http_header_timeout,
        max_conns_per_client: config.http_max_conns_per_client,
        max_conns: config
            .http_max_conns
            .unwrap_or_else(|| crate::http::serve::HttpLimits::default_max_conns(nofile)),
    };
    tracing::info!(
        open_files = nofile, max_conns = limits.max_conns, max_conns_per_client = limits.max_conns_per_client,
        header_timeout = ?limits.header_timeout, "HTTP API limits"
    );
    let server = crate::http::serve::ApiServer::new(api, limits);
    tokio::spawn(server.clone().serve(http, None));
    if let Some((listener, tls)) = https {
        tokio::spawn(server.serve(listener, Some(tls)));
    }
    // Services with a sidecar block get their proxies once the API serves: those registered
    // through the API before a restart (if still registered), then --config-dir's (which win).
    let registered = agent.view(|v| {
        v.replica()
            .own_record()
            .map(|r| {
                r.services
                    .keys()
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
            })
            .unwrap_or_default()
    });
    let mut from_config = Vec::new();
    for d in &definitions {
        let gateway = crate::services::mesh_gateway_addresses(&d.service, config.advertise.ip())
            .map_err(|why| anyhow::anyhow!("--config-dir: service {:?}: {why}", d.service.id))?;
        if gateway.is_none() && d.sidecar.is_none() {
            continue;
        }
        let spec = crate::connect::sidecars::SidecarSpec {
            upstreams: d.sidecar.clone().unwrap_or_default(),
            token: config.acl_agent_token.clone(),
            mesh_gateway: gateway,
        };
        from_config.push((d.service.id.to_string(), spec));
    }
    for (id, spec) in persisted_sidecars
        .into_iter()
        .filter(|(id, _)| registered.contains(id.as_str()))
        .chain(from_config)
    {
        sidecars.start(&id, spec)?;
    }
    tracing::info!(
        node = %config.node, gossip = %config.bind, advertise = %config.advertise, http = %config.http_addr,
        https = ?config.https.as_ref().map(|h| h.addr), dns = %config.dns_addr,
        datacenter = %config.datacenter, encrypted, dev = config.dev, "murmur agent running"
    );

    let (join, join_errors) = resolve_seeds(&config.join).await;
    let (retry, retry_errors) = resolve_seeds(&config.retry_join).await;
    if let Some(err) = join_errors.into_iter().chain(retry_errors).next() {
        bail!("cannot use join address {err}");
    }
    let has_seeds = !join.is_empty() || !retry.is_empty();
    agent.with_node(|n| {
        n.node_mut()
            .set_seeds(join.iter().chain(&retry).copied().collect())
    });
    if !join.is_empty() {
        match agent.join(&join).await {
            Ok(n) => tracing::info!(contacted = n, "joined the cluster"),
            Err(errors) => bail!(
                "could not join through any of {}: {} (--retry-join keeps trying instead of exiting)",
                config.join.join(", "),
                errors.join("; ")
            ),
        }
    }
    if !retry.is_empty() {
        tokio::spawn(retry_join(agent.clone(), retry));
    }
    tokio::spawn(coordinates::publish(agent.clone()));
    if let Some(connect) = bootstrap {
        tokio::spawn(crate::connect::bootstrap::run(
            agent.clone(),
            connect,
            has_seeds,
        ));
    }
    if let Some(gateway) = gateway {
        tokio::spawn(gateway.run(agent.clone()));
    }
    tokio::spawn(async {
        tokio::time::sleep(SHED_STARTUP_CODE_AFTER).await;
        let shed = shed::shed_startup_code();
        tracing::debug!(bytes = shed, "shed the code mapped while starting");
    });

    wait_for_shutdown(&leave).await;
    tracing::info!("leaving the cluster");
    agent.leave();
    tokio::time::sleep(LEAVE_PROPAGATION).await;
    tracing::info!("left; shutting down");
    Ok(())
}

/// One warning for each way this agent is open to anyone who can reach it: the HTTP API or DNS
/// on a non-loopback address without ACLs, gossip unencrypted on a non-loopback address.
fn insecure_settings(config: &AgentConfig, encrypted: bool) -> Vec<String> {
    let exposed = |addr: &SocketAddr| !addr.ip().is_loopback();
    let mut warnings = Vec::new();
    if !config.acl_enabled {
        let https = config.https.as_ref().map(|h| h.addr);
        for (what, addr, flag) in [
            ("HTTP API", Some(config.http_addr), "--http-addr"),
            ("HTTP API", https, "--https-addr"),
            ("DNS interface", Some(config.dns_addr), "--dns-addr"),
        ] {
            if let Some(addr) = addr.filter(exposed) {
                warnings.push(format!(
                    "the {what} listens on {addr}, reachable from other hosts, and ACLs are off: anyone who reaches it can read the catalog{}; start with --acl-enabled --acl-default-policy deny, or bind {flag} to 127.0.0.1",
                    if what == "HTTP API" { ", write every key and ask for any service's certificate" } else { "" }
                ));
            }
        }
    }
    if !encrypted && exposed(&config.bind) {
        warnings.push(format!(
            "gossip on {} is not encrypted: anyone on the network can read and forge membership and replicated data; give every agent --encrypt KEY (from murmur keygen)",
            config.bind
        ));
    }
    warnings
}

/// The replica: restored from `--data-dir` (with a writer for its journal), or empty and in
/// memory without one.
fn open_replica(
    config: &AgentConfig,
    identity: &NodeIdentity,
) -> anyhow::Result<(Replica, Option<Persister>)> {
    let replica_config = ReplicaConfig::default();
    let Some(dir) = &config.data_dir else {
        let replica = Replica::new(
            &identity.name,
            identity.node_id,
            identity.generation,
            replica_config,
        );
        return Ok((replica, None));
    };
    let store = Store::open(dir)?;
    let loaded = store.load()?;
    let entries = loaded.journal.len();
    let replica = Replica::restore(
        &identity.name,
        identity.node_id,
        identity.generation,
        replica_config,
        loaded.snapshot,
        loaded.journal,
    );
    tracing::info!(
        index = replica.index(),
        records = replica.records().len(),
        keys = replica.shared().len(),
        journal_entries = entries,
        "replicated state restored"
    );
    Ok((replica, Some(store.start_writer()?)))
}

/// This node's record at start: its address and datacenter, the services registered through
/// the API in an earlier life (persisted), and those of `--config-dir` (which win by id).
fn own_record(
    config: &AgentConfig,
    persisted: Option<&NodeRecord>,
    definitions: &[crate::services::Definition],
) -> NodeRecord {
    let mut record = persisted.cloned().unwrap_or_default();
    record.address = config.advertise.ip().to_string();
    record.datacenter = config.datacenter.clone();
    record
        .tagged_addresses
        .insert("lan".into(), config.advertise.ip().to_string());
    for definition in definitions {
        record
            .services
            .insert(definition.service.id.clone(), definition.service.clone());
    }
    wan::Gateway::mark_record(config.wan.as_ref(), &mut record);
    let opted_out = crate::connect::bootstrap::NO_BOOTSTRAP_META;
    if config.ca_bootstrap {
        record.meta.remove(opted_out);
    } else {
        record.meta.insert(opted_out.into(), "false".into());
    }
    record
}

/// The keyring: the persisted one if any (it carries rotations made while running), else
/// `--encrypt`.
fn load_keyring(config: &AgentConfig, data: Option<&DataDir>) -> anyhow::Result<Keyring> {
    let flag = config
        .encrypt
        .as_deref()
        .map(SecretKey::from_base64)
        .transpose()
        .context("--encrypt")?;
    if let Some(keys) = data.map(DataDir::keyring).transpose()?.flatten() {
        if flag.as_ref().is_some_and(|k| !keys.contains(k)) {
            tracing::warn!(
                "--encrypt is ignored: the keyring in --data-dir (kept across rotations) is used instead"
            );
        }
        return Ok(Keyring::from_keys(keys));
    }
    if let (Some(key), Some(data)) = (&flag, data) {
        data.save_keyring(std::slice::from_ref(key))?;
    }
    Ok(Keyring::new(flag))
}

fn in_use(err: std::io::Error, what: &str, addr: SocketAddr, flag: &str) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "the {what} address {addr} is already in use (another agent?): pick another with {flag}"
        )
    } else {
        anyhow::anyhow!(
            "cannot listen on the {what} address {addr}: {err}: pick another with {flag}"
        )
    }
}

async fn retry_join(agent: Arc<Agent>, seeds: Vec<SocketAddr>) {
    let mut wait = Duration::from_secs(1);
    loop {
        match agent.join(&seeds).await {
            Ok(n) => {
                tracing::info!(contacted = n, "retry-join: joined the cluster");
                return;
            }
            Err(errors) => {
                tracing::warn!(retry_in = ?wait, "retry-join: no seed answered: {}", errors.join("; "));
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_JOIN_MAX_WAIT);
    }
}

async fn wait_for_shutdown(leave: &Notify) {
    tokio::select! {
        () = shutdown_signal() => {}
        _ = leave.notified() => tracing::info!("leave requested over the API"),
    }
}

/// Returns at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = sigterm => tracing::info!("terminated"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: impl FnOnce(&mut AgentArgs)) -> AgentConfig {
        let mut args = AgentArgs {
            dev: true,
            ..AgentArgs::default()
        };
        extra(&mut args);
        AgentConfig::resolve(&args).unwrap()
    }

    #[test]
    fn an_agent_open_to_other_hosts_says_which_flag_closes_it() {
        assert!(
            insecure_settings(&config(|_| {}), false).is_empty(),
            "loopback"
        );
        let open = config(|a| {
            a.http_addr = Some("0.0.0.0:8500".into());
            a.dns_addr = Some("0.0.0.0:8600".into());
            a.bind = Some("10.0.0.1:8301".into());
        });
        let warnings = insecure_settings(&open, false);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("--acl-enabled") && warnings[0].contains("--http-addr"));
        assert!(warnings[1].contains("--dns-addr"));
        assert!(warnings[2].contains("--encrypt"));
        let closed = config(|a| {
            a.http_addr = Some("0.0.0.0:8500".into());
            a.acl_enabled = true;
        });
        assert!(insecure_settings(&closed, true).is_empty());
    }
}
