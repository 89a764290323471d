//! Command-line interface: `murmur agent` runs an agent; every other command talks to a running
//! agent over its HTTP API (`--http-addr` or `MURMUR_HTTP_ADDR`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use murmur_proxy::agent_api::AgentApiSettings;

/// murmur: a leaderless, gossip-first service mesh.
#[derive(Parser, Debug)]
#[command(name = "murmur", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line, taking Consul's one-dash flags too ([`go_style_flags`]).
    pub fn parse_consul_style() -> Self {
        Self::parse_from(go_style_flags(std::env::args_os()))
    }
}

/// Consul's CLI takes Go-style flags with one dash (`consul intention create -allow web db`,
/// `consul kv put -flags=7 …`), where clap reads `-allow` as five one-letter flags. Rewrites
/// `-NAME` and `-NAME=VALUE` to `--NAME…` when NAME is a long flag of the (sub)command being
/// parsed, so commands copied from Consul's docs and scripts work; anything else (one-letter
/// flags, `-1`, unknown names, everything after `--`) is passed on as it came.
pub fn go_style_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    let mut args = args.into_iter();
    out.extend(args.next());
    let mut literal = false;
    for arg in args {
        let Some(text) = arg.to_str().filter(|_| !literal) else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            literal = true;
        } else if let Some(sub) = command.find_subcommand(text) {
            command = sub.clone();
        } else if let Some(flag) = text.strip_prefix('-').filter(|f| !f.starts_with('-')) {
            let name = flag.split('=').next().unwrap_or(flag);
            if name.len() > 1 && command.get_arguments().any(|a| a.get_long() == Some(name)) {
                out.push(format!("-{text}").into());
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run an agent (use --dev for a single in-memory agent on loopback).
    Agent(Box<AgentArgs>),
    /// List the members of the cluster as the local agent sees them.
    Members {
        /// Only members whose status matches this regular expression (alive, leaving, left, failed).
        #[arg(long)]
        status: Option<String>,
        /// Show every tag and the protocol version.
        #[arg(long)]
        detailed: bool,
        /// The WAN pool's members instead (agents serving as WAN gateways list them).
        #[arg(long)]
        wan: bool,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Tell the local agent to join a cluster through the given gossip addresses.
    Join {
        /// Gossip addresses (host or host:port; the port defaults to 8301).
        #[arg(required = true)]
        addrs: Vec<String>,
        /// Join the WAN pool through these WAN addresses (the agent must serve as a gateway).
        #[arg(long)]
        wan: bool,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Make the local agent leave the cluster gracefully and shut down.
    Leave {
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Fire a user event to every member.
    Event {
        /// Event name.
        name: String,
        /// Optional payload (name + payload + filter at most 512 bytes).
        payload: Option<String>,
        /// Only members whose node name matches this regular expression record the event.
        #[arg(long)]
        node: Option<String>,
        /// Only members running a service whose name matches this regular expression.
        #[arg(long)]
        service: Option<String>,
        /// With --service: only members where a matching service has a tag matching this.
        #[arg(long, requires = "service")]
        tag: Option<String>,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Print a new random gossip encryption key (base64, 32 bytes) for --encrypt.
    Keygen,
    /// Read and write the key/value store (like `consul kv`).
    #[command(subcommand)]
    Kv(KvCommand),
    /// List services and nodes of the catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Register or deregister services on the local agent.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Manage intentions: which services may connect to which (like `consul intention`).
    #[command(subcommand)]
    Intention(IntentionCommand),
    /// The mesh certificate authority: create a root, rotate it, show the trusted roots.
    #[command(subcommand)]
    Ca(CaCommand),
    /// ACL tokens and policies (like `consul acl`); the agents need --acl-enabled.
    #[command(subcommand)]
    Acl(AclCommand),
    /// The service mesh data plane.
    #[command(subcommand)]
    Connect(ConnectCommand),
    /// Put the local node, or one of its services, in or out of maintenance mode; with
    /// neither --enable nor --disable, show what is in maintenance.
    Maint {
        /// Take it out of service (its instances turn critical everywhere).
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Put it back in service.
        #[arg(long)]
        disable: bool,
        /// Why (shown as the maintenance check's output).
        #[arg(long)]
        reason: Option<String>,
        /// Only this service instance (its ID), not the whole node.
        #[arg(long, value_name = "ID")]
        service: Option<String>,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Watch a view of the catalog, KV store or events with blocking queries; on every change
    /// print its JSON, or run --handler with the JSON on stdin (like `consul watch`).
    Watch {
        #[command(flatten)]
        spec: WatchSpec,
        /// Shell command run with the JSON on stdin at every change, instead of printing it.
        #[arg(long, value_name = "CMD")]
        handler: Option<String>,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Estimate the round-trip time between two nodes from their network coordinates.
    ///
    /// With one node, the other is the local agent. LAN coordinates compare nodes of one
    /// datacenter (--datacenter picks which); with --wan, nodes are WAN gateways named
    /// node.datacenter, as `members --wan` lists them.
    Rtt {
        /// The first node.
        node: String,
        /// The second node (default: the local agent).
        other: Option<String>,
        /// Compare WAN coordinates of gateways (node.datacenter) instead.
        #[arg(long)]
        wan: bool,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Show the local agent's state: identity, members, gossip counters.
    Info {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Run the deterministic simulator: N real node cores on a virtual network under seeded
    /// faults and workload, with every invariant checked. One seed replays one run exactly.
    Sim(SimArgs),
    /// Inspect or rotate the gossip keys of the whole cluster.
    #[command(group(clap::ArgGroup::new("action").required(true)))]
    Keyring {
        /// List the keys installed on the members, with how many members hold each.
        #[arg(long, group = "action")]
        list: bool,
        /// Install a new key on every member (it opens packets, it does not seal yet).
        #[arg(long, group = "action", value_name = "KEY")]
        install: Option<String>,
        /// Make an installed key the primary (sealing) key on every member.
        #[arg(long = "use", group = "action", value_name = "KEY")]
        use_key: Option<String>,
        /// Remove a key that is not primary from every member.
        #[arg(long, group = "action", value_name = "KEY")]
        remove: Option<String>,
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// Flags of `murmur sim`.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Cluster size [default: the scenario's, else 10].
    #[arg(long)]
    pub nodes: Option<usize>,
    /// The seed of one run.
    #[arg(long, default_value_t = 0, conflicts_with = "seeds")]
    pub seed: u64,
    /// A range of seeds to sweep, `A..B` (B excluded).
    #[arg(long, value_name = "A..B")]
    pub seeds: Option<String>,
    /// Virtual time of workload and faults before the heal (Go duration) [default: the
    /// scenario's, else 120s].
    #[arg(long)]
    pub duration: Option<String>,
    /// What happens: a built-in scenario (chaos, quiet, partition, flapping, crashes, churn, silent,
    /// wan, lossy, federation) or a TOML file written like those in sim/scenarios/. A scenario
    /// with [federation] runs federated datacenters (--nodes in all, a multiple of its
    /// datacenters).
    #[arg(long, default_value = "chaos", value_name = "NAME|FILE.toml")]
    pub scenario: String,
    /// Draw how the first watched writes spread (fraction of nodes holding each over time)
    /// and, when the run crashes nodes, how each crash came to be known (fraction of nodes
    /// that declared it failed over time) as an SVG file; one run only.
    #[arg(long, value_name = "OUT.svg", conflicts_with = "seeds")]
    pub plot: Option<PathBuf>,
}

/// What `murmur watch` watches, with the flags that narrow it.
#[derive(Args, Debug, Clone)]
pub struct WatchSpec {
    /// What to watch.
    #[arg(long = "type", value_enum)]
    pub kind: WatchKind,
    /// The key (`--type key`).
    #[arg(long, required_if_eq("kind", "key"))]
    pub key: Option<String>,
    /// The prefix (`--type keyprefix`).
    #[arg(long, required_if_eq("kind", "keyprefix"))]
    pub prefix: Option<String>,
    /// The service (`--type service`; with `--type checks`, only its checks).
    #[arg(long, required_if_eq("kind", "service"))]
    pub service: Option<String>,
    /// Only instances carrying this tag (`--type service`).
    #[arg(long)]
    pub tag: Option<String>,
    /// Only healthy instances (`--type service`).
    #[arg(long)]
    pub passingonly: bool,
    /// Only events with this name (`--type event`).
    #[arg(long)]
    pub name: Option<String>,
}

/// `--cas --modify-index N` of the KV writes.
#[derive(Args, Debug, Clone)]
pub struct Cas {
    /// Only if the key's modify index is still --modify-index (0 on a put: only if absent).
    #[arg(long, requires = "modify_index")]
    pub cas: bool,
    /// The modify index --cas compares with.
    #[arg(long)]
    pub modify_index: Option<u64>,
}

/// What `murmur watch` watches.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// One KV entry.
    Key,
    /// Every KV entry under a prefix.
    Keyprefix,
    /// The instances of one service with their health.
    Service,
    /// Every service name with its tags.
    Services,
    /// Every node.
    Nodes,
    /// Health checks (all, or one service's).
    Checks,
    /// User events.
    Event,
}

/// How a listing is printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The agent's JSON, for scripts.
    Json,
}

/// The output flag of listing commands.
#[derive(Args, Debug, Clone)]
pub struct Output {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `murmur kv …`.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key's value (raw), or every key and value under a prefix with --recurse.
    Get {
        /// The key (or prefix).
        key: String,
        /// Every entry under the key, as `key:value` lines.
        #[arg(long, conflicts_with = "keys")]
        recurse: bool,
        /// Only the key names under the prefix.
        #[arg(long)]
        keys: bool,
        /// With --keys, stop at this separator (`/` lists one level).
        #[arg(long)]
        separator: Option<String>,
        /// Every field (indexes, flags), not just the value.
        #[arg(long)]
        detailed: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Write a value: the argument, `-` for stdin, `@FILE` for a file's contents.
    Put {
        /// The key.
        key: String,
        /// The value [default: empty].
        value: Option<String>,
        /// Opaque number stored with the value.
        #[arg(long)]
        flags: Option<u64>,
        #[command(flatten)]
        cas: Cas,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Delete a key, or every key under a prefix with --recurse.
    Delete {
        /// The key (or prefix).
        key: String,
        /// Every key under the prefix.
        #[arg(long)]
        recurse: bool,
        #[command(flatten)]
        cas: Cas,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Print every entry under a prefix as JSON with base64 values (`consul kv export`'s
    /// format), for `murmur kv import`.
    Export {
        /// The prefix [default: everything].
        prefix: Option<String>,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Write the entries of an export: a file, `-` for stdin, or `@FILE`.
    Import {
        /// Where the JSON comes from [default: stdin].
        data: Option<String>,
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// `murmur catalog …`.
#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Every service name (with --tags, its tags).
    Services {
        /// Show the tags of each service.
        #[arg(long)]
        tags: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Every node (with --service, those running an instance of it).
    Nodes {
        /// Only nodes with an instance of this service.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// The instances of one service with their health.
    Service {
        /// Service name.
        name: String,
        /// Only instances carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// `murmur intention …`. Names are service names or `*`.
#[derive(Subcommand, Debug)]
pub enum IntentionCommand {
    /// Create an intention SOURCE → DESTINATION (allow unless --deny).
    Create {
        /// Source service or `*`.
        source: String,
        /// Destination service or `*`.
        destination: String,
        /// Allow the connections (the default).
        #[arg(long, conflicts_with = "deny")]
        allow: bool,
        /// Deny the connections.
        #[arg(long)]
        deny: bool,
        /// Free text shown with the intention.
        #[arg(long, default_value = "")]
        description: String,
        /// Replace an existing intention of the same pair instead of failing.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Delete the intention SOURCE → DESTINATION.
    Delete {
        /// Source service or `*`.
        source: String,
        /// Destination service or `*`.
        destination: String,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Show the intention SOURCE → DESTINATION.
    Get {
        /// Source service or `*`.
        source: String,
        /// Destination service or `*`.
        destination: String,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Every intention, highest precedence first.
    List {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Would SOURCE be allowed to connect to DESTINATION? Exit status 0 if so, 2 if not.
    Check {
        /// Source service.
        source: String,
        /// Destination service.
        destination: String,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// The intentions that apply to NAME as a destination (or with --source, as a source).
    Match {
        /// Service name.
        name: String,
        /// Match NAME as the source instead of the destination.
        #[arg(long)]
        source: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// `murmur connect …`.
#[derive(Subcommand, Debug)]
pub enum ConnectCommand {
    /// Run the sidecar proxy of a service registered on the local agent: inbound, a QUIC
    /// endpoint with mutual TLS whose callers the intentions authorize, spliced to the local
    /// app; outbound, a loopback TCP listener per --upstream that carries each connection as
    /// one QUIC stream to a healthy instance's proxy.
    Proxy(ProxyArgs),
    /// Run a mesh gateway: it registers itself (Kind mesh-gateway, its LAN and WAN
    /// addresses), reads the server name of each new QUIC flow from its first datagram, and
    /// forwards the flow to a healthy instance of that service here or to a gateway of the
    /// datacenter the name carries, without terminating TLS. Sidecars whose upstreams say
    /// `/local` or `/remote` reach other datacenters through gateways.
    Gateway(GatewayArgs),
}

/// Flags of `murmur connect gateway`.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The kind of gateway: `mesh` (routes other datacenters' flows by server name) or
    /// `terminating` (fronts services outside the mesh, given with --link).
    #[arg(long, default_value = "mesh")]
    pub kind: String,
    /// A service outside the mesh (registered with /v1/catalog/register) that a terminating
    /// gateway fronts: it presents the service's mesh identity, applies its intentions, and
    /// dials its catalog address in plain TCP (repeatable).
    #[arg(long, value_name = "NAME")]
    pub link: Vec<String>,
    /// Speak TLS to linked service NAME, trusting the CA in CA_FILE (PEM) and checking the
    /// certificate for the service's catalog address (repeatable) [default: plain TCP].
    #[arg(long, value_name = "NAME=CA_FILE")]
    pub link_tls: Vec<String>,
    /// The service name a mesh gateway registers as, from which the ids of a terminating
    /// gateway's proxies derive [default: mesh-gateway, which sidecars look for (Consul's
    /// default); terminating-gateway].
    #[arg(long)]
    pub service: Option<String>,
    /// The instance id [default: the service name].
    #[arg(long)]
    pub id: Option<String>,
    /// UDP address it listens on for its datacenter's proxies (its LAN address); a
    /// terminating gateway listens on this IP, one free port per linked service.
    #[arg(long, value_name = "ADDR")]
    pub address: String,
    /// UDP address other datacenters' gateways reach it at (listened on too when it differs
    /// from --address) [default: --address].
    #[arg(long, value_name = "ADDR")]
    pub wan_address: Option<String>,
    /// Threads that move the gateway's traffic: as for a proxy, one keeps each batch, its
    /// flow's state and its sockets on one core with no hand-offs between threads; raise it
    /// when one gateway must carry more than a core's worth.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    /// Serve the gateway's metrics for Prometheus at http://ADDR/metrics (flows by route and
    /// destination, bytes each way, drops by reason) [default: not served].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub target: HttpTarget,
}

impl GatewayArgs {
    /// `--service`, or the default of the gateway's kind.
    pub fn service_name(&self) -> &str {
        self.service
            .as_deref()
            .unwrap_or(if self.kind == "terminating" {
                "terminating-gateway"
            } else {
                "mesh-gateway"
            })
    }
}

/// Flags of `murmur connect proxy`.
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// ID of the service instance (registered on the local agent) this proxy fronts.
    #[arg(long, value_name = "SERVICE_ID")]
    pub sidecar_for: String,
    /// An upstream, NAME:PORT (listens on 127.0.0.1:PORT) or NAME:IP:PORT; repeatable.
    /// NAME@DC:PORT reaches NAME in datacenter DC (found through the agent's ?dc=).
    #[arg(long, value_name = "NAME[@DC]:PORT")]
    pub upstream: Vec<String>,
    /// UDP address of the inbound QUIC endpoint [default: the agent's address, any free port].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Threads that move the proxy's traffic. One thread keeps a connection's packets, its
    /// QUIC state and its sockets on one core with no hand-offs between threads: on a 2-core
    /// host it moved 20% more per flow than two, and opened new connections a little faster
    /// (BENCHMARKS.md); raise it when one proxy must carry more than a core's worth.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    /// Keep polling the proxy's sockets for DURATION after its last datagram instead of going
    /// to sleep (Go duration, e.g. 50us; at most 10ms) [default: off]. Trades CPU for
    /// latency on virtual machines whose idle vCPUs halt, where every sleep ends in a wake-up
    /// through the hypervisor: see BENCHMARKS.md, "Busy polling", for what it saves and costs.
    #[arg(long, value_name = "DURATION", value_parser = busy_poll_window)]
    pub busy_poll: Option<Duration>,
    /// Serve this proxy's metrics for Prometheus at http://ADDR/metrics (per source and
    /// destination service: connections, refusals, bytes, connect latency; README lists them)
    /// [default: not served]. Like Consul's `envoy_prometheus_bind_addr`: a standalone proxy
    /// is a process of its own, so its agent's `/v1/agent/metrics` does not have them.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub target: HttpTarget,
}

/// The longest `--busy-poll` window: beyond it a proxy serving one request per window keeps a
/// core busy, and the wake-ups it saves cost tens of microseconds.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

fn busy_poll_window(text: &str) -> Result<Duration, String> {
    match crate::duration::parse(text) {
        Some(window) if !window.is_zero() && window <= MAX_BUSY_POLL => Ok(window),
        Some(_) => Err(format!(
            "the window must be more than 0 and at most {MAX_BUSY_POLL:?} (e.g. 50us); leave the flag out for no busy polling"
        )),
        None => Err("not a duration: write it as Go does, e.g. 50us or 1ms".to_owned()),
    }
}

/// `murmur ca …`.
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a root certificate and key in a data dir (offline). An agent started with that
    /// data dir publishes the root and signs leaves; copy `ca.json` to the data dirs of the
    /// other agents that should sign too.
    Init {
        /// The agent's data dir (the key goes to ca.json there, readable by its owner only).
        #[arg(long, value_name = "PATH")]
        data_dir: PathBuf,
        /// Cluster id of the agents that will use it: it names the trust domain.
        #[arg(long, default_value = "murmur")]
        cluster_id: String,
    },
    /// Make a new root on the local agent, which keeps its key (in its data dir) and signs
    /// every leaf from now on; the old roots stay trusted for one leaf lifetime.
    Rotate {
        #[command(flatten)]
        target: HttpTarget,
    },
    /// The roots the local agent trusts, the signing one first.
    Roots {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// `murmur acl …`.
#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Make the first management token (once per cluster; refused after that). Keep its
    /// SecretID: it is shown only now.
    Bootstrap {
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Policies: named rules.
    #[command(subcommand)]
    Policy(AclPolicyCommand),
    /// Tokens: who a request is.
    #[command(subcommand)]
    Token(AclTokenCommand),
}

/// `murmur acl policy …`.
#[derive(Subcommand, Debug)]
pub enum AclPolicyCommand {
    /// Create a policy from rules in Consul's language (HCL or JSON).
    Create {
        /// Its unique name.
        #[arg(long)]
        name: String,
        /// The rules, or @FILE to read them from a file.
        #[arg(long)]
        rules: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// List the policies.
    List {
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// `murmur acl token …`.
#[derive(Subcommand, Debug)]
pub enum AclTokenCommand {
    /// Create a token linked to policies (by name); prints its AccessorID and SecretID.
    Create {
        /// A policy to link, by name (repeatable).
        #[arg(long = "policy-name")]
        policy_names: Vec<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// List the tokens (their secrets are never shown).
    List {
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Delete a token by its AccessorID: it stops working on every agent.
    Delete {
        /// The token's AccessorID.
        accessor_id: String,
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// `murmur services …`.
#[derive(Subcommand, Debug)]
pub enum ServicesCommand {
    /// Register a service: from a definitions file (`{"service": {...}}` or
    /// `{"services": [...]}`), or from flags.
    Register {
        /// Definitions file.
        #[arg(required_unless_present = "name", conflicts_with = "name")]
        file: Option<PathBuf>,
        /// Service name.
        #[arg(long)]
        name: Option<String>,
        /// Instance id [default: the name].
        #[arg(long)]
        id: Option<String>,
        /// Port.
        #[arg(long)]
        port: Option<u16>,
        /// Address [default: the node's].
        #[arg(long)]
        address: Option<String>,
        /// Tag (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        #[command(flatten)]
        target: HttpTarget,
    },
    /// Deregister a service by id, or every service of a definitions file.
    Deregister {
        /// Instance id or definitions file.
        id_or_file: String,
        #[command(flatten)]
        target: HttpTarget,
    },
}

/// Which agent a client command talks to, and as whom.
#[derive(Args, Debug, Clone, Default)]
pub struct HttpTarget {
    /// HTTP address of the agent to talk to (also read from Consul's CONSUL_HTTP_ADDR, so
    /// scripts written for Consul work) [default: 127.0.0.1:8500].
    #[arg(long, env = "MURMUR_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Datacenter to ask (its answer comes through the gateways) [default: the agent's own].
    #[arg(long, env = "MURMUR_DATACENTER")]
    pub datacenter: Option<String>,
    /// ACL token to send (also read from Consul's CONSUL_HTTP_TOKEN) [default: none, the
    /// anonymous token].
    #[arg(long, env = "MURMUR_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the agent's HTTPS certificate (also read from
    /// CONSUL_CACERT) [default: the system's roots]. HTTPS is spoken to an address given as
    /// `https://HOST:PORT`, or to any address when MURMUR_HTTP_SSL (or CONSUL_HTTP_SSL) is true.
    #[arg(long, env = "MURMUR_CACERT", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for an agent started with --tls-verify-incoming (also read from
    /// CONSUL_CLIENT_CERT).
    #[arg(long, env = "MURMUR_CLIENT_CERT", value_name = "PATH")]
    pub client_cert: Option<PathBuf>,
    /// Key (PEM) of --client-cert (also read from CONSUL_CLIENT_KEY).
    #[arg(long, env = "MURMUR_CLIENT_KEY", value_name = "PATH")]
    pub client_key: Option<PathBuf>,
}

impl HttpTarget {
    /// A target at `addr` with no datacenter and no token.
    pub fn at(addr: impl Into<String>) -> Self {
        Self {
            http_addr: Some(addr.into()),
            ..Self::default()
        }
    }

    /// How to reach the agent: the environment's settings (murmur's names, then Consul's), with
    /// the flags given on top.
    pub fn settings(&self) -> anyhow::Result<AgentApiSettings> {
        let mut settings = AgentApiSettings::from_env(self.http_addr.as_deref())?;
        let given = |flag: &Option<PathBuf>, env: Option<PathBuf>| flag.clone().or(env);
        settings.token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .or(settings.token);
        settings.ca_file = given(&self.ca_file, settings.ca_file);
        settings.client_cert = given(&self.client_cert, settings.client_cert);
        settings.client_key = given(&self.client_key, settings.client_key);
        Ok(settings)
    }

    /// The datacenter asked for, if any: an empty `--datacenter` means the agent's own.
    pub fn datacenter(&self) -> Option<&str> {
        self.datacenter.as_deref().filter(|dc| !dc.is_empty())
    }
}

/// Flags of `murmur agent`. Each has a key of the same name (with `_`) in `--config-file`;
/// a flag given on the command line wins over the file.
#[derive(Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// JSON configuration file with the same settings as the flags.
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Single-node development agent: in memory, loopback addresses, no --data-dir needed.
    #[arg(long)]
    pub dev: bool,
    /// Node name, unique in the cluster [default: the host name].
    #[arg(long)]
    pub node: Option<String>,
    /// Address to bind gossip (UDP and TCP) to [default: 0.0.0.0:8301; --dev: 127.0.0.1:8301].
    #[arg(long)]
    pub bind: Option<String>,
    /// Address other members reach this agent at [default: the bind address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Datacenter of this agent.
    #[arg(long)]
    pub datacenter: Option<String>,
    /// Cluster id: members of different clusters ignore each other's packets.
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Join through this gossip address at start (repeatable); the agent exits if none answers.
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<String>,
    /// Keep trying to join through this address with backoff until it answers (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub retry_join: Vec<String>,
    /// Gossip encryption key (base64, from `murmur keygen`); every member needs the same key.
    /// The service mesh needs it: an agent that holds no CA key gets its services' leaf
    /// certificates from one that does, and such agent requests are refused unencrypted.
    #[arg(long, value_name = "KEY")]
    pub encrypt: Option<String>,
    /// Directory for the node id, generation, keyring and the replicated state (journal and
    /// snapshot); required unless --dev, which keeps everything in memory.
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Directory of service definitions (*.json in Consul's `{"service": {...}}` or
    /// `{"services": [...]}` shape) registered on this agent at start.
    #[arg(long, value_name = "PATH")]
    pub config_dir: Option<PathBuf>,
    /// HTTP API address.
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// HTTPS API address (Consul's port is 8501) [default: off]; needs --tls-cert-file and
    /// --tls-key-file. The plain --http-addr keeps serving: bind it to 127.0.0.1 for local tools.
    #[arg(long, value_name = "ADDR")]
    pub https_addr: Option<String>,
    /// The HTTPS API's certificate chain (PEM, leaf first).
    #[arg(long, value_name = "PATH")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert-file; keep it readable by the agent only.
    #[arg(long, value_name = "PATH")]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that sign the clients' certificates, for --tls-verify-incoming.
    #[arg(long, value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,
    /// Refuse HTTPS clients that present no certificate signed by --tls-ca-file.
    #[arg(long)]
    pub tls_verify_incoming: bool,
    /// How long a client has to send each request's head, counted from the connection's start
    /// or the end of the previous answer; an HTTP connection idle that long is closed (Go
    /// duration) [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub http_header_timeout: Option<String>,
    /// Most HTTP connections open at once; past it new ones get 503 [default: half the
    /// open-files limit left after 512 kept for gossip, DNS, checks and sidecars].
    #[arg(long, value_name = "N")]
    pub http_max_conns: Option<usize>,
    /// Most HTTP connections open at once from one client address; past it new ones get 429
    /// (Consul's http_max_conns_per_client) [default: 200].
    #[arg(long, value_name = "N")]
    pub http_max_conns_per_client: Option<usize>,
    /// How long failed and left members stay listed before they are forgotten (Go duration).
    #[arg(long, value_name = "DURATION")]
    pub reap_after: Option<String>,
    /// A tag key=value carried in this member's identity (repeatable; 256 bytes in all).
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Vec<String>,
    /// DNS address, UDP and TCP [default: 127.0.0.1:8600].
    #[arg(long, value_name = "ADDR")]
    pub dns_addr: Option<String>,
    /// Domain the DNS interface answers for [default: consul].
    #[arg(long, value_name = "DOMAIN")]
    pub dns_domain: Option<String>,
    /// TTL of DNS answers, in seconds [default: 0, as Consul: every lookup sees the catalog now].
    #[arg(long, value_name = "SECONDS")]
    pub dns_ttl: Option<u32>,
    /// Allow checks that run a command (`Args`): anyone who can reach the HTTP API could
    /// then run programs as this agent's user, so they are refused unless this is given.
    #[arg(long)]
    pub enable_script_checks: bool,
    /// What a mesh connection gets when no intention matches it: `deny` (recommended in
    /// production: only what an intention allows gets through) or `allow` [default: deny;
    /// allow with --dev, so a first try works before any intention exists].
    #[arg(long, value_name = "allow|deny")]
    pub default_intention_policy: Option<String>,
    /// Lifetime of the mesh leaf certificates this agent hands out (Go duration, at least 1m)
    /// [default: 72h]; they are renewed before they expire.
    #[arg(long, value_name = "DURATION")]
    pub leaf_cert_ttl: Option<String>,
    /// Serve the web UI at /ui/ (and redirect / to it) [default: true]; `--ui=false` turns
    /// it off.
    #[arg(long, value_name = "true|false")]
    pub ui: Option<bool>,
    /// Whether this agent may make its datacenter's mesh CA root when there is none (or when
    /// no live agent has held the signing key for a minute): the first agent by name that
    /// may, once it has joined, makes it and keeps its key in its data dir; the others ask it
    /// to sign. `false` to bring your own root with `murmur ca init` [default: true].
    #[arg(long, value_name = "true|false")]
    pub ca_bootstrap: Option<bool>,
    /// Turn ACLs on: every API request is checked against its token's policies (Consul's
    /// acl.enabled). Make the first management token with `murmur acl bootstrap`.
    #[arg(long)]
    pub acl_enabled: bool,
    /// What a request may do where no rule of its token says: `allow` (Consul's default) or
    /// `deny` (recommended: only what a policy grants).
    #[arg(long, value_name = "allow|deny")]
    pub acl_default_policy: Option<String>,
    /// Token the agent itself acts with: the sidecars of --config-dir services.
    #[arg(
        long,
        value_name = "SECRET",
        env = "MURMUR_ACL_AGENT_TOKEN",
        hide_env_values = true
    )]
    pub acl_agent_token: Option<String>,
    /// This agent may serve as one of its datacenter's WAN gateways: the agents of a
    /// datacenter pick --wan-gateways of the live eligible ones (no election), which join the
    /// WAN pool that links datacenters.
    #[arg(long)]
    pub wan_eligible: bool,
    /// Address to bind WAN gossip (UDP and TCP) to while serving as a gateway [default: the
    /// --bind IP, port 8302].
    #[arg(long, value_name = "ADDR")]
    pub bind_wan: Option<String>,
    /// Address gateways of other datacenters reach this agent at [default: the --advertise
    /// IP with the --bind-wan port].
    #[arg(long, value_name = "ADDR")]
    pub advertise_wan: Option<String>,
    /// WAN address of an agent of another datacenter to join through when this agent becomes
    /// a gateway (repeatable; list several: only those serving answer).
    #[arg(long, value_name = "ADDR")]
    pub join_wan: Vec<String>,
    /// Like --join-wan, retried with backoff until one answers (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub retry_join_wan: Vec<String>,
    /// How many agents of this datacenter serve as WAN gateways [default: 3].
    #[arg(long, value_name = "N")]
    pub wan_gateways: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_style(args: &[&str]) -> Vec<String> {
        go_style_flags(
            std::iter::once("murmur")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
        .into_iter()
        .skip(1)
        .map(|a| a.into_string().unwrap())
        .collect()
    }

    #[test]
    fn consuls_one_dash_flags_read_as_long_flags_of_their_subcommand() {
        assert_eq!(
            go_style(&["intention", "create", "-deny", "-replace", "web", "db"]),
            ["intention", "create", "--deny", "--replace", "web", "db"]
        );
        assert_eq!(
            go_style(&[
                "kv",
                "put",
                "-flags=7",
                "-http-addr",
                "127.0.0.1:1",
                "k",
                "v"
            ]),
            [
                "kv",
                "put",
                "--flags=7",
                "--http-addr",
                "127.0.0.1:1",
                "k",
                "v"
            ]
        );
        // A flag of another subcommand, a one-letter flag, a number, an unknown name, a
        // double-dash flag and anything after `--` stay as they are.
        for args in [
            &["intention", "list", "-allow"][..],
            &["kv", "get", "-h"],
            &["kv", "put", "k", "-1"],
            &["kv", "get", "-nonsense"],
            &["intention", "create", "--allow", "web", "db"],
            &["kv", "put", "--", "-flags", "v"],
        ] {
            assert_eq!(go_style(args), args, "{args:?}");
        }
        let parsed = Cli::parse_from(go_style_flags(
            ["murmur", "intention", "create", "-allow", "web", "db"].map(OsString::from),
        ));
        assert!(matches!(
            parsed.command,
            Command::Intention(IntentionCommand::Create { allow: true, .. })
        ));
    }

    #[test]
    fn busy_poll_takes_a_window_up_to_ten_milliseconds_and_says_what_is_wrong() {
        assert_eq!(busy_poll_window("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(busy_poll_window("10ms"), Ok(MAX_BUSY_POLL));
        for (text, says) in [
            ("0", "more than 0"),
            ("11ms", "at most 10ms"),
            ("1s", "at most 10ms"),
            ("fast", "not a duration"),
            ("100", "not a duration"),
        ] {
            let err = busy_poll_window(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
