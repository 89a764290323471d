//! End to end through a real Consul client library: Debian's python3-consul (installed by
//! `.ci/run`) registers a service with a check, reads health, uses KV with cas, and waits in a
//! blocking query for a write made on another agent (`tests/clients/python_consul.py`).

mod common;

use std::process::Command;

use common::{PYTHON, cluster, has_python_consul, keygen};

#[test]
fn python_consul_works_unchanged() {
    if !has_python_consul() {
        return;
    }
    let agents = cluster("py", 2, &keygen());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_consul.py"
    );
    let out = Command::new(PYTHON)
        .arg(script)
        .arg(agents[0].http.port().to_string())
        .arg(agents[1].http.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python-consul failed:\n{}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agents[0].log()
    );
}
