//! End to end through a real Consul client library: Debian's python3-consul (installed by
//! `.ci/run`) registers a service with a check, reads health, uses KV with cas, and waits in a
//! blocking query for a write made on another agent (`tests/clients/python_consul.py`).

mod common;

use common::{cluster, has_python_consul, keygen, python_client};

#[test]
fn python_consul_works_unchanged() {
    if !has_python_consul() {
        return;
    }
    let agents = cluster("py", 2, &keygen());
    let ports: Vec<String> = agents.iter().map(|a| a.http.port().to_string()).collect();
    let out = python_client("python_consul.py", &[&ports[0], &ports[1]]);
    assert!(
        out.status.success(),
        "python-consul failed:\n{}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agents[0].log()
    );
}
