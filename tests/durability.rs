//! Durability end to end: no acknowledged write is lost across kill -9, and a disk that fills
//! up refuses writes with the reason instead of acknowledging them, keeps serving reads, and
//! takes writes again once there is room. RELIABILITY.md reports these runs.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, Spec, http, keygen, wait_until};
use rand::{RngExt, SeedableRng};

/// How many times the agent is killed in the middle of a burst.
const KILL_POINTS: usize = 20;
/// KV writes and registrations a burst tries, at most, before its kill.
const BURST_KV: usize = 2000;
const BURST_SERVICES: usize = 50;
/// Clients writing at once.
const WRITERS: usize = 6;

/// What the clients were told was written.
#[derive(Default)]
struct Acknowledged {
    keys: BTreeSet<String>,
    services: BTreeSet<String>,
}

/// Writes `round`'s keys and services to the agent at `addr` from [`WRITERS`] threads until
/// `stop`, recording each acknowledged one.
fn burst(
    addr: std::net::SocketAddr,
    round: usize,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Acknowledged>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in (w..BURST_KV + BURST_SERVICES).step_by(WRITERS) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if i < BURST_KV {
                        let key = format!("burst/{round}/{i}");
                        let value = format!("value of {key}");
                        let path = format!("/v1/kv/{key}");
                        if http(addr, "PUT", &path, value.as_bytes())
                            .is_ok_and(|(s, _, body)| s == 200 && body.trim() == "true")
                        {
                            acked.lock().unwrap().keys.insert(key);
                        }
                    } else {
                        let id = format!("svc-{round}-{i}");
                        let body = format!(r#"{{"Name": "burst", "ID": "{id}", "Port": 80}}"#);
                        if http(addr, "PUT", "/v1/agent/service/register", body.as_bytes())
                            .is_ok_and(|(s, _, _)| s == 200)
                        {
                            acked.lock().unwrap().services.insert(id);
                        }
                    }
                }
            })
        })
        .collect()
}

/// The `burst/` keys `agent` holds.
fn keys_on(agent: &Agent) -> BTreeSet<String> {
    let (status, _, body) = agent.request("GET", "/v1/kv/burst/?keys", b"");
    if status == 404 {
        return BTreeSet::new();
    }
    serde_json::from_str::<Vec<String>>(&body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[test]
fn no_acknowledged_write_is_lost_across_kill_9_at_random_points() {
    let seed: u64 = std::env::var("MURMUR_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("kill points drawn with MURMUR_KILL_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let key = keygen();
    let peer = Agent::start(Spec {
        name: "keeper",
        key: Some(&key),
        join: None,
        extra: &[],
    });
    let mut victim = Agent::start(Spec {
        name: "victim",
        key: Some(&key),
        join: None,
        extra: &[],
    });
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let started = Instant::now();
    let mut mid_burst = 0;
    for round in 0..KILL_POINTS {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = burst(victim.http, round, &stop, &acked);
        std::thread::sleep(Duration::from_millis(rng.random_range(10..400)));
        victim.kill9();
        let cut = writers.iter().any(|w| !w.is_finished());
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
        mid_burst += usize::from(cut);
        // Restarted alone on its data dir: what it holds now came from its disk only.
        victim.start_again(None, &[]);
        let acked = acked.lock().unwrap();
        let held = keys_on(&victim);
        let missing: Vec<&String> = acked.keys.difference(&held).collect();
        assert!(
            missing.is_empty(),
            "round {round} (MURMUR_KILL_SEED={seed}): {} acknowledged keys lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let services = victim.get("/v1/agent/services");
        let lost: Vec<&String> = acked
            .services
            .iter()
            .filter(|id| services.get(id.as_str()).is_none())
            .collect();
        assert!(
            lost.is_empty(),
            "round {round} (MURMUR_KILL_SEED={seed}): acknowledged registrations lost: {lost:?}"
        );
    }
    let acked = acked.lock().unwrap();
    eprintln!(
        "{KILL_POINTS} kills ({mid_burst} in the middle of a burst) in {:?}: {} KV writes and {} registrations acknowledged, none lost",
        started.elapsed(),
        acked.keys.len(),
        acked.services.len()
    );
    assert!(
        mid_burst >= KILL_POINTS / 2,
        "most kills land in the middle of a burst"
    );
    // Its peer gets every one of them once they meet.
    let (status, _, body) = victim.request("PUT", &format!("/v1/agent/join/{}", peer.gossip), b"");
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(60), || acked
            .keys
            .is_subset(&keys_on(&peer))),
        "the peer lacks {} acknowledged keys",
        acked.keys.difference(&keys_on(&peer)).count()
    );
}

/// Mounts a tmpfs of `size` at `dir`; `false` (and why, on stderr) where this test cannot.
fn mount_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(err) => {
            eprintln!("SKIPPED: no mount command: {err}");
            false
        }
    }
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_refuses_writes_with_the_reason_serves_reads_and_recovers_when_room_returns() {
    let mut agent = Agent::start(Spec {
        name: "full-disk",
        key: None,
        join: None,
        extra: &[],
    });
    agent.kill9();
    // The data dir becomes a 2 MiB disk (the agent starts afresh on it).
    if !mount_tmpfs(&agent.data_dir, "2m") {
        return;
    }
    let _mounted = Mounted(agent.data_dir.clone());
    agent.start_again(None, &[]);
    let value = vec![b'v'; 200 * 1024];
    let mut written = Vec::new();
    let refused = (0..40).find_map(|i| {
        let path = format!("/v1/kv/fill/{i}");
        let (status, _, body) = agent.request("PUT", &path, &value);
        match status {
            200 => {
                written.push(path);
                None
            }
            _ => Some((status, body)),
        }
    });
    let (status, body) = refused.expect("a 2 MiB disk fills up");
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("could not write it to its data dir") && body.contains("space"),
        "the reason is given: {body}"
    );
    assert!(!written.is_empty());
    // Reads go on, writes keep being refused (never acknowledged).
    let (status, _, _) = agent.request("GET", &format!("{}?raw", written[0]), b"");
    assert_eq!(status, 200);
    let (status, _, _) = agent.request("PUT", "/v1/kv/fill/more", &value);
    assert_eq!(status, 500);

    // Room returns: writes are taken again, and everything acknowledged survives a restart.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&agent.data_dir)
        .status()
        .unwrap();
    assert!(grown.success());
    let (status, _, body) = agent.request("PUT", "/v1/kv/after", b"room again");
    assert_eq!(status, 200, "{body}");
    agent.kill9();
    agent.start_again(None, &[]);
    for path in written.iter().chain([&"/v1/kv/after".to_owned()]) {
        let (status, _, _) = agent.request("GET", path, b"");
        assert_eq!(status, 200, "{path} survived the restart:\n{}", agent.log());
    }
}

#[test]
fn a_torn_journal_is_repaired_a_damaged_one_stops_the_agent_and_peers_refill_what_was_moved_away() {
    let key = keygen();
    let keeper = Agent::start(Spec {
        name: "keeper",
        key: Some(&key),
        join: None,
        extra: &[],
    });
    let mut patient = Agent::start(Spec {
        name: "patient",
        key: Some(&key),
        join: Some(keeper.gossip),
        extra: &[],
    });
    for i in 0..50 {
        let (status, _, _) = patient.request("PUT", &format!("/v1/kv/burst/{i}"), b"v");
        assert_eq!(status, 200);
    }
    let all: BTreeSet<String> = (0..50).map(|i| format!("burst/{i}")).collect();
    assert!(wait_until(Duration::from_secs(30), || keys_on(&keeper) == all));
    let journal = patient.data_dir.join("state/journal");

    // A torn tail (a crash in the middle of an append): cut off with a warning, nothing lost.
    patient.kill9();
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
    std::fs::write(&journal, &bytes).unwrap();
    patient.start_again(Some(keeper.gossip), &[]);
    assert_eq!(keys_on(&patient), all);
    assert!(patient.log().contains("torn write"), "{}", patient.log());

    // A flipped byte in the middle: the agent refuses to start, naming the file, the offset
    // and what to do, and changes nothing.
    patient.kill9();
    let mut bytes = std::fs::read(&journal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&journal, &bytes).unwrap();
    let out = patient.rerun_to_exit(Some(keeper.gossip), &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains(&journal.display().to_string())
            && said.contains("record at byte")
            && said.contains("move"),
        "{said}"
    );
    assert_eq!(std::fs::read(&journal).unwrap(), bytes, "nothing changed");

    // Emptied, or removed: refused the same way, not a start with less than it acknowledged.
    std::fs::write(&journal, b"").unwrap();
    let out = patient.rerun_to_exit(Some(keeper.gossip), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is empty"));
    std::fs::remove_file(&journal).unwrap();
    let out = patient.rerun_to_exit(Some(keeper.gossip), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is missing"));

    // Doing what it says (moving state/ away): the agent starts empty and its peer refills it.
    let state = patient.data_dir.join("state");
    std::fs::rename(&state, patient.data_dir.join("state.damaged")).unwrap();
    patient.start_again(Some(keeper.gossip), &[]);
    assert!(
        wait_until(Duration::from_secs(60), || keys_on(&patient) == all),
        "refilled by anti-entropy: {} of 50",
        keys_on(&patient).len()
    );
}

#[test]
fn a_hundred_watchers_all_see_the_last_of_500_writes_made_elsewhere_while_a_member_dies() {
    let key = keygen();
    let mut agents = common::cluster("load", 3, &key);
    let mut victim = agents.pop().unwrap();
    let (watched, writer) = (&agents[0], &agents[1]);
    let (status, headers, _) = watched.request("GET", "/v1/kv/load/last", b"");
    assert_eq!(status, 404);
    let start_index = common::header(&headers, "x-consul-index").unwrap();
    let rss_before = watched.rss_kib();
    let last_written = Arc::new(Mutex::new(None::<Instant>));
    let addr = watched.http;
    let watchers: Vec<_> = (0..100)
        .map(|_| {
            let (mut index, last_written) = (start_index.clone(), last_written.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(90);
                while Instant::now() < deadline {
                    let path = format!("/v1/kv/load/last?raw&index={index}&wait=30s");
                    let Ok((status, headers, body)) = http(addr, "GET", &path, b"") else {
                        continue;
                    };
                    if status == 200 && body == "499" {
                        let written = last_written.lock().unwrap().expect("written before seen");
                        return Some(written.elapsed());
                    }
                    index = common::header(&headers, "x-consul-index").unwrap_or(index);
                }
                None
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..500 {
        if i == 250 {
            victim.kill9();
        }
        if i == 499 {
            // Timed from the moment the last write is sent (a watcher may see it before the
            // writer has its acknowledgement).
            *last_written.lock().unwrap() = Some(Instant::now());
        }
        let (status, _, body) = writer.request("PUT", "/v1/kv/load/last", i.to_string().as_bytes());
        assert_eq!(status, 200, "{body}");
    }
    let mut waits: Vec<Duration> = watchers
        .into_iter()
        .map(|w| w.join().unwrap().expect("every watcher saw the last value"))
        .collect();
    waits.sort();
    let rss_after = watched.rss_kib();
    eprintln!(
        "100 watchers woke {:?} (p50) / {:?} (p99) / {:?} (max) after the last of 500 writes on another agent was sent; watched agent RSS {} → {} KiB",
        waits[49], waits[98], waits[99], rss_before, rss_after
    );
}

#[test]
fn a_read_only_data_dir_stops_the_start_with_the_reason_and_its_data_intact() {
    let mut agent = Agent::start(Spec {
        name: "read-only",
        key: None,
        join: None,
        extra: &[],
    });
    agent.kill9();
    if !mount_tmpfs(&agent.data_dir, "8m") {
        return;
    }
    let _mounted = Mounted(agent.data_dir.clone());
    agent.start_again(None, &[]);
    let (status, _, _) = agent.request("PUT", "/v1/kv/kept", b"before");
    assert_eq!(status, 200);
    agent.kill9();
    let remount = |mode: &str| {
        std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&agent.data_dir)
            .status()
            .unwrap()
            .success()
    };
    assert!(remount("ro"));
    let out = agent.rerun_to_exit(None, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.to_lowercase().contains("read-only"), "{said}");
    assert!(
        said.contains(&agent.data_dir.display().to_string()),
        "names the dir: {said}"
    );
    assert!(remount("rw"));
    agent.start_again(None, &[]);
    let (status, _, body) = agent.request("GET", "/v1/kv/kept?raw", b"");
    assert_eq!((status, body.as_str()), (200, "before"));
}
