//! Health checks, run by the agent that owns the service, as Consul runs them: TTL checks the
//! application keeps alive through the API, HTTP and TCP probes on an interval. A status change
//! rewrites this agent's record, so it replicates as owned data like everything else the agent
//! owns; a probe that keeps answering the same is not written again.
//!
//! Definitions live in `checks.json` under `--data-dir`, so a restarted agent runs the same
//! checks (keeping the statuses its record already holds until the first new result).

pub mod definition;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use murmur_catalog::{Check, Health};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use definition::{CheckDefinition, Probe};

use crate::agent::persist::DataDir;
use crate::agent::runtime::Agent;

/// File under `--data-dir` with the definitions of the checks this agent runs.
const DEFINITIONS_FILE: &str = "checks.json";
/// Most of a probe's answer kept as the check's output (Consul keeps 4 KiB).
const MAX_OUTPUT: usize = 4096;

/// Why a check operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No check with that id runs on this agent.
    #[error("Unknown check ID {0:?}. Ensure that the check ID is passed, not the check name.")]
    Unknown(String),
    /// Only TTL checks take reports.
    #[error("check {0:?} is not a TTL check: only TTL checks take pass, warn, fail or update")]
    NotTtl(String),
    /// The check names a service this agent does not have.
    #[error("ServiceID {0:?} does not exist on this agent: register the service first")]
    NoService(String),
    /// The write could not be made durable.
    #[error(transparent)]
    Write(#[from] anyhow::Error),
}

struct Running {
    definition: CheckDefinition,
    task: JoinHandle<()>,
    /// Wakes a TTL check's timer (each report restarts its TTL).
    reports: Option<watch::Sender<()>>,
}

/// The checks this agent runs.
pub struct Checks {
    agent: Arc<Agent>,
    running: Mutex<HashMap<String, Running>>,
    persisting: Mutex<()>,
    store: Option<DataDir>,
    http: reqwest::Client,
}

impl Checks {
    /// A runner for `agent`; `store` keeps the definitions across restarts.
    pub fn new(agent: Arc<Agent>, store: Option<DataDir>) -> Arc<Self> {
        Arc::new(Self {
            agent,
            running: Mutex::new(HashMap::new()),
            persisting: Mutex::new(()),
            store,
            http: reqwest::Client::new(),
        })
    }

    /// Definitions persisted by an earlier run of this agent.
    pub fn persisted(store: Option<&DataDir>) -> anyhow::Result<Vec<CheckDefinition>> {
        DataDir::read_json(
            store,
            DEFINITIONS_FILE,
            "delete it and register the checks again",
        )
    }

    /// Starts running `definition` (replacing a check with the same id). With `keep_status`,
    /// a status the record already holds stays until the first result (a restart).
    pub async fn register(
        self: &Arc<Self>,
        definition: CheckDefinition,
        keep_status: bool,
    ) -> Result<(), CheckError> {
        let def = definition.clone();
        let found = self
            .agent
            .write(move |r, _| {
                let mut record = r.own_record().cloned().unwrap_or_default();
                if !def.service_id.is_empty()
                    && !record.services.contains_key(def.service_id.as_str())
                {
                    return false;
                }
                let kept = record
                    .checks
                    .get(def.id.as_str())
                    .filter(|_| keep_status)
                    .cloned();
                let check = Check {
                    id: def.id.clone().into(),
                    name: def.name.clone().into(),
                    status: kept.as_ref().map_or(def.initial, |c| c.status),
                    output: kept.map(|c| c.output).unwrap_or_default(),
                    service_id: def.service_id.clone().into(),
                };
                record.checks.insert(def.id.clone().into(), check);
                r.set_own_record(Some(record));
                true
            })
            .await?;
        if !found {
            return Err(CheckError::NoService(definition.service_id));
        }
        let (reports, task) = self.spawn(&definition);
        let old = self.lock().insert(
            definition.id.clone(),
            Running {
                definition,
                task,
                reports,
            },
        );
        if let Some(old) = old {
            old.task.abort();
        }
        self.persist()?;
        Ok(())
    }

    /// Stops a check and removes it from the record.
    pub async fn deregister(&self, id: &str) -> Result<(), CheckError> {
        let running = self.lock().remove(id);
        let id_owned = id.to_owned();
        let removed = self
            .agent
            .write(move |r, _| {
                let mut record = r.own_record().cloned().unwrap_or_default();
                let removed = record.checks.remove(id_owned.as_str()).is_some();
                if removed {
                    r.set_own_record(Some(record));
                }
                removed
            })
            .await?;
        match running {
            Some(running) => running.task.abort(),
            None if !removed => return Err(CheckError::Unknown(id.to_owned())),
            None => {}
        }
        self.persist()?;
        Ok(())
    }

    /// Stops the checks of a deregistered service (the record lost them with the service).
    pub fn forget_service(&self, service_id: &str) -> anyhow::Result<()> {
        self.lock().retain(|_, running| {
            let keep = running.definition.service_id != service_id;
            if !keep {
                running.task.abort();
            }
            keep
        });
        self.persist()
    }

    /// A TTL check's report: sets its status and output and restarts its TTL.
    pub async fn report(
        &self,
        id: &str,
        status: Health,
        mut output: String,
    ) -> Result<(), CheckError> {
        truncate(&mut output);
        {
            let running = self.lock();
            let running = running
                .get(id)
                .ok_or_else(|| CheckError::Unknown(id.to_owned()))?;
            let reports = running
                .reports
                .as_ref()
                .ok_or_else(|| CheckError::NotTtl(id.to_owned()))?;
            reports.send_replace(());
        }
        set_status(&self.agent, id, status, output).await?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().expect("check table poisoned")
    }

    /// Writes the definitions file. Concurrent registrations persist one at a time, each
    /// snapshotting the table after the one before wrote: two writers racing on the file's
    /// temp name lost one registration's write (seen with two proxies registering at once).
    fn persist(&self) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _one_at_a_time = self.persisting.lock().expect("persist lock poisoned");
        let mut definitions: Vec<CheckDefinition> =
            self.lock().values().map(|r| r.definition.clone()).collect();
        definitions.sort_by(|a, b| a.id.cmp(&b.id));
        store.write(
            DEFINITIONS_FILE,
            &serde_json::to_string_pretty(&definitions)?,
        )
    }

    fn spawn(
        self: &Arc<Self>,
        definition: &CheckDefinition,
    ) -> (Option<watch::Sender<()>>, JoinHandle<()>) {
        let agent = self.agent.clone();
        let def = definition.clone();
        match definition.probe.clone() {
            Probe::Ttl { ttl } => {
                let (tx, rx) = watch::channel(());
                (Some(tx), tokio::spawn(run_ttl(agent, def, ttl, rx)))
            }
            probe => {
                let http = self.http.clone();
                (None, tokio::spawn(run_probe(agent, http, def, probe)))
            }
        }
    }
}

/// Writes a check's status and output into this agent's record when they changed.
async fn set_status(
    agent: &Arc<Agent>,
    id: &str,
    status: Health,
    output: String,
) -> anyhow::Result<()> {
    let id = id.to_owned();
    agent
        .write(move |r, _| {
            let Some(mut record) = r.own_record().cloned() else {
                return;
            };
            let Some(check) = record.checks.get_mut(id.as_str()) else {
                return;
            };
            if check.status == status && check.output == output {
                return;
            }
            tracing::info!(check = %id, from = check.status.as_str(), to = status.as_str(), "check status changed");
            check.status = status;
            check.output = output;
            r.set_own_record(Some(record));
        })
        .await
}

/// Deregisters the service of a check that stayed critical too long.
async fn reap_service(agent: &Arc<Agent>, def: &CheckDefinition) {
    let service = def.service_id.clone();
    tracing::warn!(check = %def.id, %service, "check critical too long; deregistering its service");
    let result = agent
        .write(move |r, _| {
            let Some(mut record) = r.own_record().cloned() else {
                return;
            };
            record.services.remove(service.as_str());
            record.checks.retain(|_, c| c.service_id != service);
            r.set_own_record(Some(record));
        })
        .await;
    if let Err(err) = result {
        tracing::error!(%err, "could not deregister the service of a critical check");
    }
}

/// Tracks how long a check has been critical, for `DeregisterCriticalServiceAfter`.
struct CriticalFor {
    after: Option<Duration>,
    since: Option<Instant>,
}

impl CriticalFor {
    /// Notes a result; true once the check has been critical for longer than allowed.
    fn expired(&mut self, status: Health) -> bool {
        let Some(after) = self.after else {
            return false;
        };
        if status != Health::Critical {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        since.elapsed() >= after
    }
}

async fn run_ttl(
    agent: Arc<Agent>,
    def: CheckDefinition,
    ttl: Duration,
    mut reports: watch::Receiver<()>,
) {
    let mut critical = CriticalFor {
        after: def.deregister_critical_after,
        since: None,
    };
    loop {
        match tokio::time::timeout(ttl, reports.changed()).await {
            Ok(Ok(())) => {
                critical.expired(Health::Passing);
                continue;
            }
            Ok(Err(_)) => return,
            Err(_) => {}
        }
        let output = format!("TTL expired: no report for {ttl:?}");
        if let Err(err) = set_status(&agent, &def.id, Health::Critical, output).await {
            tracing::error!(%err, check = %def.id, "could not record an expired TTL");
        }
        if critical.expired(Health::Critical) && !def.service_id.is_empty() {
            reap_service(&agent, &def).await;
            return;
        }
    }
}

async fn run_probe(agent: Arc<Agent>, http: reqwest::Client, def: CheckDefinition, probe: Probe) {
    let mut critical = CriticalFor {
        after: def.deregister_critical_after,
        since: None,
    };
    let interval = match &probe {
        Probe::Http { interval, .. }
        | Probe::Tcp { interval, .. }
        | Probe::Script { interval, .. } => *interval,
        Probe::Ttl { .. } => return,
    };
    loop {
        let (status, output) = run_once(&http, &probe).await;
        if let Err(err) = set_status(&agent, &def.id, status, output).await {
            tracing::error!(%err, check = %def.id, "could not record a check result");
        }
        if critical.expired(status) && !def.service_id.is_empty() {
            reap_service(&agent, &def).await;
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Runs one probe: its status and what it saw.
async fn run_once(http: &reqwest::Client, probe: &Probe) -> (Health, String) {
    match probe {
        Probe::Http {
            url,
            method,
            headers,
            timeout,
            ..
        } => {
            let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
                return (Health::Critical, format!("invalid HTTP method {method:?}"));
            };
            let mut request = http.request(method.clone(), url).timeout(*timeout);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(response) => {
                    let code = response.status();
                    let status = if code.is_success() {
                        Health::Passing
                    } else if code.as_u16() == 429 {
                        Health::Warning
                    } else {
                        Health::Critical
                    };
                    let body = response.text().await.unwrap_or_default();
                    let mut output = format!("HTTP {method} {url}: {code} Output: {body}");
                    truncate(&mut output);
                    (status, output)
                }
                Err(err) => (Health::Critical, format!("HTTP {method} {url}: {err}")),
            }
        }
        Probe::Tcp { addr, timeout, .. } => {
            match tokio::time::timeout(*timeout, tokio::net::TcpStream::connect(addr.as_str()))
                .await
            {
                Ok(Ok(_)) => (Health::Passing, format!("TCP connect {addr}: Success")),
                Ok(Err(err)) => (Health::Critical, format!("dial tcp {addr}: {err}")),
                Err(_) => (
                    Health::Critical,
                    format!("dial tcp {addr}: i/o timeout after {timeout:?}"),
                ),
            }
        }
        Probe::Script { args, timeout, .. } => {
            let mut command = tokio::process::Command::new(&args[0]);
            command
                .args(&args[1..])
                .kill_on_drop(true)
                .stdin(std::process::Stdio::null());
            match tokio::time::timeout(*timeout, command.output()).await {
                Ok(Ok(out)) => {
                    let status = match out.status.code() {
                        Some(0) => Health::Passing,
                        Some(1) => Health::Warning,
                        _ => Health::Critical,
                    };
                    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
                    output.push_str(&String::from_utf8_lossy(&out.stderr));
                    truncate(&mut output);
                    (status, output)
                }
                Ok(Err(err)) => (Health::Critical, format!("cannot run {}: {err}", args[0])),
                Err(_) => (
                    Health::Critical,
                    format!("{} timed out after {timeout:?}", args[0]),
                ),
            }
        }
        Probe::Ttl { .. } => (Health::Critical, "a TTL check is not probed".into()),
    }
}

fn truncate(output: &mut String) {
    if output.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_tell_up_from_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let tcp = |addr: String| Probe::Tcp {
            addr,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        };
        let http = reqwest::Client::new();
        assert_eq!(run_once(&http, &tcp(open)).await.0, Health::Passing);
        drop(listener);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        let (status, output) = run_once(&http, &tcp(gone.clone())).await;
        assert_eq!(status, Health::Critical);
        assert!(output.contains(&gone), "{output}");
    }

    #[tokio::test]
    async fn scripts_report_by_exit_code() {
        let script = |code: &str| Probe::Script {
            args: vec!["sh".into(), "-c".into(), format!("echo out; exit {code}")],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        };
        let http = reqwest::Client::new();
        assert_eq!(
            run_once(&http, &script("0")).await,
            (Health::Passing, "out\n".into())
        );
        assert_eq!(run_once(&http, &script("1")).await.0, Health::Warning);
        assert_eq!(run_once(&http, &script("2")).await.0, Health::Critical);
    }

    #[test]
    fn critical_for_counts_from_the_first_critical_result() {
        let mut c = CriticalFor {
            after: Some(Duration::ZERO),
            since: None,
        };
        assert!(!c.expired(Health::Passing));
        assert!(c.expired(Health::Critical));
        let mut never = CriticalFor {
            after: None,
            since: None,
        };
        assert!(!never.expired(Health::Critical));
    }

    #[test]
    fn long_output_is_cut_on_a_character_boundary() {
        let mut s = "é".repeat(MAX_OUTPUT);
        truncate(&mut s);
        assert!(s.len() <= MAX_OUTPUT);
    }
}
