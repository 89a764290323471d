//! The agent's side of service identity: the CA keys it holds, the roots it publishes, and the
//! leaf certificates it hands to the services registered on it.
//!
//! Any agent started with a CA key (`murmur ca init`, or `--dev`, which makes one in memory)
//! publishes its root as a root of its datacenter (global data: every datacenter trusts it)
//! and signs. The newest root of the agent's datacenter signs its leaves
//! (`murmur_proxy::roots`); an agent that does not hold its key asks one that does, over the
//! sealed agent-to-agent stream. A datacenter never signs with another's root, so a
//! datacenter cut off from the others keeps issuing leaves. Holders say so in their node
//! record's meta ([`SIGNER_META`]), so askers know where to go. Issued leaves are cached per service and
//! replaced when due for renewal or when the signing root changes.

pub mod bootstrap;
pub mod sidecars;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use murmur_catalog::{Action, CaRoot};
use murmur_proxy::ca::{self, Authority, Leaf};
use murmur_proxy::identity::{ServiceId, TrustDomain};
use murmur_proxy::roots::signing_root;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::agent::config::AgentConfig;
use crate::agent::persist::{CaKeyFile, DataDir};
use crate::agent::runtime::{Agent, PeerRequests, PendingAnswer, Via, wall_ms};
use crate::agent::view::View;

/// Node meta key an agent sets to the id of the root whose key it holds.
pub const SIGNER_META: &str = "murmur-ca-signer";
/// The agent request that signs a leaf.
pub const SIGN_LEAF: &str = "sign-leaf";

/// What an agent asks a signer for.
#[derive(Debug, Serialize, Deserialize)]
struct SignRequest {
    service: String,
    datacenter: String,
    public_key_der: Vec<u8>,
    ttl_s: u64,
}

/// A leaf this agent handed out, with its key.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    /// The certificate and its validity.
    pub leaf: Leaf,
    /// Its private key, PEM.
    pub key_pem: String,
    /// Whose identity it carries.
    pub id: ServiceId,
    /// Index of this issuance on this agent (blocking queries wait for it to change).
    pub index: u64,
    /// When to replace it (unix seconds), jittered so a fleet does not renew at once.
    pub renew_at_s: u64,
}

/// Service identity on this agent.
pub struct Connect {
    trust_domain: TrustDomain,
    datacenter: String,
    /// What a connection gets when no intention matches.
    pub default_policy: Action,
    leaf_ttl_s: u64,
    data: Option<DataDir>,
    /// CA keys held here, oldest first.
    keys: Mutex<Vec<Authority>>,
    leaves: Mutex<HashMap<String, IssuedLeaf>>,
    issued: AtomicU64,
}

impl Connect {
    /// Loads the CA keys kept in the data dir; with `--dev` and none, makes a root in memory.
    pub fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        let trust_domain = TrustDomain::of_cluster(&config.cluster_id)?;
        let data = config.data_dir.as_deref().map(DataDir::open).transpose()?;
        let mut keys = Vec::new();
        for file in data
            .as_ref()
            .map(DataDir::ca_keys)
            .transpose()?
            .unwrap_or_default()
        {
            keys.push(
                Authority::from_pem(&file.cert_pem, &file.key_pem, file.created_ms)
                    .context("the CA key in the data dir (ca.json)")?,
            );
        }
        if keys.is_empty() && config.dev {
            keys.push(Authority::generate(
                &trust_domain,
                wall_ms(),
                rand::rng().random(),
            )?);
        }
        Ok(Self {
            trust_domain,
            datacenter: config.datacenter.clone(),
            default_policy: config.default_intention_policy,
            leaf_ttl_s: config.leaf_cert_ttl.as_secs(),
            data,
            keys: Mutex::new(keys),
            leaves: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
        })
    }

    /// The cluster's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Vec<Authority>> {
        self.keys.lock().expect("CA keys poisoned")
    }

    /// Publishes the roots whose keys this agent holds, as roots of its datacenter, and says
    /// in its record that it signs with the newest; called at start and after a rotation.
    pub async fn publish(&self, agent: &Arc<Agent>) -> anyhow::Result<()> {
        let (roots, newest): (Vec<CaRoot>, Option<String>) = {
            let keys = self.keys();
            (
                keys.iter().map(|k| k.root().clone()).collect(),
                keys.last().map(|k| k.root().id.clone()),
            )
        };
        let datacenter = self.datacenter.clone();
        agent
            .write(move |replica, now| {
                for root in roots {
                    replica.put_ca_root(&datacenter, root, now);
                }
                if let (Some(id), Some(mut record)) = (newest, replica.own_record().cloned())
                    && record.meta.get(SIGNER_META) != Some(&id)
                {
                    record.meta.insert(SIGNER_META.into(), id);
                    replica.set_own_record(Some(record));
                }
            })
            .await
    }

    /// Makes a new root whose key this agent keeps (in its data dir), and publishes it: it
    /// signs every leaf from now on, and the old roots stay trusted for one leaf lifetime.
    pub async fn rotate(&self, agent: &Arc<Agent>) -> anyhow::Result<CaRoot> {
        let authority = Authority::generate(&self.trust_domain, wall_ms(), rand::rng().random())?;
        let root = authority.root().clone();
        {
            let mut keys = self.keys();
            keys.push(authority);
            self.save(&keys)?;
        }
        self.publish(agent).await?;
        Ok(root)
    }

    fn save(&self, keys: &[Authority]) -> anyhow::Result<()> {
        let Some(data) = &self.data else {
            return Ok(()); // --dev: in memory
        };
        let files: Vec<CaKeyFile> = keys
            .iter()
            .map(|k| CaKeyFile {
                cert_pem: k.root().cert_pem.clone(),
                key_pem: k.key_pem().to_owned(),
                created_ms: k.root().created_ms,
            })
            .collect();
        data.save_ca_keys(&files)
    }

    /// How long an old root stays trusted after a newer one appears: one leaf lifetime, by
    /// when every leaf it signed has expired.
    pub fn overlap_ms(&self) -> u64 {
        self.leaf_ttl_s.saturating_mul(1000)
    }

    /// The current leaf of `service` for this agent's instances: the cached one while it is
    /// fresh and signed by the signing root, else a new one.
    pub async fn leaf(&self, agent: &Arc<Agent>, service: &str) -> anyhow::Result<IssuedLeaf> {
        let id = ServiceId::new(&self.trust_domain, &self.datacenter, service)?;
        let signer = self
            .current_signer(agent)
            .ok_or_else(|| anyhow!(self.no_root()))?;
        let now_s = wall_ms() / 1000;
        if let Some(cached) = self.leaves().get(service)
            && cached.leaf.root_id == signer.id
            && now_s < cached.renew_at_s
        {
            return Ok(cached.clone());
        }
        let (key_pem, public_key_der) = ca::leaf_key()?;
        let request = SignRequest {
            service: service.to_owned(),
            datacenter: self.datacenter.clone(),
            public_key_der,
            ttl_s: self.leaf_ttl_s,
        };
        let signed = match self.sign(&signer.id, &request) {
            Some(signed) => signed,
            None => self.ask_signer(agent, &signer.id, &request).await,
        };
        let leaf = match signed {
            Ok(leaf) => leaf,
            // A new root can arrive before the record saying who holds its key, and a signer
            // can be briefly unreachable: a leaf that is still valid serves meanwhile (its root
            // stays trusted through the overlap), and the next request tries again.
            Err(err) => match self.leaves().get(service) {
                Some(cached) if now_s < cached.leaf.valid_before_s => {
                    tracing::warn!(
                        service,
                        "cannot renew the leaf yet, keeping the current one: {err:#}"
                    );
                    return Ok(cached.clone());
                }
                _ => return Err(err),
            },
        };
        let jitter: f64 = rand::rng().random_range(0.0..1.0);
        let issued = IssuedLeaf {
            renew_at_s: ca::renew_at(leaf.valid_after_s, leaf.valid_before_s, jitter),
            leaf,
            key_pem,
            id,
            index: self.issued.fetch_add(1, Ordering::Relaxed) + 1,
        };
        self.leaves().insert(service.to_owned(), issued.clone());
        metrics::counter!("murmur_connect_leaves_issued_total").increment(1);
        Ok(issued)
    }

    /// Why this agent could not hand out a leaf now, found without signing or asking anyone
    /// (`None`: nothing known stands in the way): no root in this datacenter, no encryption
    /// for the agent request to a signer, or no live signer. What a registration with a
    /// sidecar block answers at once, instead of a log line later.
    pub fn why_no_leaf(&self, agent: &Agent) -> Option<String> {
        let Some(signer) = self.current_signer(agent) else {
            return Some(self.no_root());
        };
        if self.keys().iter().any(|k| k.root().id == signer.id) {
            return None;
        }
        agent.view(|v| {
            if !v.encrypted() {
                Some(
                    "this agent holds no CA key and asks a signer for leaves, and agent requests need gossip encryption: start every agent with --encrypt".to_owned(),
                )
            } else if live_signers(v, &signer.id).is_empty() {
                Some(no_signer(&signer.id))
            } else {
                None
            }
        })
    }

    /// What the bootstrap rule looks at ([`bootstrap::Outlook`]), as this agent sees it now.
    pub fn outlook(&self, agent: &Agent, has_seeds: bool) -> bootstrap::Outlook {
        let signer = self.current_signer(agent);
        let held_here = signer
            .as_ref()
            .is_some_and(|s| self.keys().iter().any(|k| k.root().id == s.id));
        agent.view(|v| {
            let records = v.replica().records();
            let may_bootstrap = |name: &str| {
                records.get(name).is_none_or(|r| {
                    r.meta.get(bootstrap::NO_BOOTSTRAP_META).map(String::as_str) != Some("false")
                })
            };
            let me = v.me().name.to_string();
            let first = v
                .members()
                .into_iter()
                .filter(|m| m.status.is_active() && *m.identity.datacenter == *self.datacenter)
                .map(|m| m.identity.name.to_string())
                .find(|name| may_bootstrap(name))
                .is_some_and(|name| name == me);
            bootstrap::Outlook {
                has_root: signer.is_some(),
                signer_alive: held_here
                    || signer.is_some_and(|s| !live_signers(v, &s.id).is_empty()),
                synced: !has_seeds || v.sync_rounds_done() > 0,
                first,
            }
        })
    }

    /// Why there is no leaf when this datacenter has no root.
    fn no_root(&self) -> String {
        format!(
            "datacenter {} has no CA root yet: the first agent of the datacenter by name makes one a few seconds after it has joined (unless started with --ca-bootstrap=false: then run `murmur ca init` and start an agent with that data dir); each datacenter signs with its own root",
            self.datacenter
        )
    }

    /// The root that signs this datacenter's leaves now, as this agent's replica has the
    /// roots.
    fn current_signer(&self, agent: &Agent) -> Option<CaRoot> {
        agent.view(|v| signing_root(v.replica().ca_roots(), &self.datacenter).cloned())
    }

    fn leaves(&self) -> std::sync::MutexGuard<'_, HashMap<String, IssuedLeaf>> {
        self.leaves.lock().expect("leaf cache poisoned")
    }

    /// Signs with the key of root `root_id` if this agent holds it (`None` when it does not).
    fn sign(&self, root_id: &str, request: &SignRequest) -> Option<anyhow::Result<Leaf>> {
        let keys = self.keys();
        let authority = keys.iter().find(|k| k.root().id == root_id)?;
        Some((|| {
            let id = ServiceId::new(&self.trust_domain, &request.datacenter, &request.service)?;
            let ttl = request.ttl_s.clamp(60, ca::DEFAULT_LEAF_TTL_S * 10);
            let leaf = authority.sign_leaf(
                &id,
                &request.public_key_der,
                wall_ms() / 1000,
                ttl,
                rand::rng().random(),
            )?;
            Ok(leaf)
        })())
    }

    /// Asks an agent that holds the key of `root_id` to sign.
    async fn ask_signer(
        &self,
        agent: &Arc<Agent>,
        root_id: &str,
        request: &SignRequest,
    ) -> anyhow::Result<Leaf> {
        let signers = agent.view(|v| live_signers(v, root_id));
        if signers.is_empty() {
            bail!(no_signer(root_id));
        }
        let body = serde_json::to_vec(request)?;
        let mut errors = Vec::new();
        for addr in signers {
            match agent.ask_peer(addr, SIGN_LEAF, body.clone()).await {
                Ok(reply) => {
                    return serde_json::from_slice(&reply)
                        .with_context(|| format!("the signer at {addr} answered garbage"));
                }
                Err(err) => errors.push(format!("{addr}: {err:#}")),
            }
        }
        bail!("no signer could sign: {}", errors.join("; "))
    }
}

/// The gossip addresses of the live agents that hold the key of root `root_id`.
fn live_signers(view: &View<'_>, root_id: &str) -> Vec<std::net::SocketAddr> {
    view.replica()
        .records()
        .iter()
        .filter(|(_, r)| r.meta.get(SIGNER_META).is_some_and(|id| id == root_id))
        .filter_map(|(name, _)| view.peer(name).filter(|m| m.status.is_active()))
        .map(|m| m.identity.addr)
        .collect()
}

/// Why there is no leaf when no live agent holds the signing root's key.
fn no_signer(root_id: &str) -> String {
    format!(
        "no live agent holds the key of the signing CA root {root_id}: start one with the data dir that holds it"
    )
}

impl PeerRequests for Connect {
    fn answer(&self, agent: Arc<Agent>, _via: Via, body: Vec<u8>) -> PendingAnswer {
        // Signing is quick and synchronous: done before the future is handed back.
        let answer = self.sign_for_peer(&agent, &body);
        Box::pin(std::future::ready(answer))
    }
}

impl Connect {
    /// Signs the leaf a peer asked for with the current signing root, if this agent holds it.
    fn sign_for_peer(&self, agent: &Agent, body: &[u8]) -> Result<Vec<u8>, String> {
        let request: SignRequest =
            serde_json::from_slice(body).map_err(|e| format!("bad sign request: {e}"))?;
        let signer = self
            .current_signer(agent)
            .ok_or("this agent knows no CA root of its datacenter")?;
        let leaf = self
            .sign(&signer.id, &request)
            .ok_or_else(|| format!("this agent does not hold the key of root {}", signer.id))?
            .map_err(|e| format!("{e:#}"))?;
        metrics::counter!("murmur_connect_leaves_signed_for_peers_total").increment(1);
        serde_json::to_vec(&leaf).map_err(|e| e.to_string())
    }
}
