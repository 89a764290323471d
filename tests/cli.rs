//! End to end: the client commands against real agents — kv (get, put with flags and cas,
//! delete, export/import), catalog, services, maint, info — as tables and as JSON.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Agent, cluster, keygen, wait_until};
use serde_json::Value;

fn run(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "murmur {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(out: Output, expected: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expected), "{err}");
}

#[test]
fn client_commands_read_and_write_like_consuls() {
    let agents = cluster("cl", 2, &keygen());
    let (a, b) = (&agents[0], &agents[1]);

    run(a, &["kv", "put", "app/color", "blue"]);
    run(a, &["kv", "put", "app/size", "10", "--flags", "7"]);
    assert!(wait_until(Duration::from_secs(30), || b
        .cli(&["kv", "get", "app/size"])
        .status
        .success()));
    assert_eq!(run(b, &["kv", "get", "app/color"]), "blue\n");
    assert_eq!(
        run(b, &["kv", "get", "app", "--recurse"]),
        "app/color:blue\napp/size:10\n"
    );
    assert_eq!(
        run(b, &["kv", "get", "app/", "--keys"]),
        "app/color\napp/size\n"
    );
    let json: Value =
        serde_json::from_str(&run(b, &["kv", "get", "app/size", "--format", "json"])).unwrap();
    assert_eq!(json[0]["Flags"], 7);
    let index = json[0]["ModifyIndex"].as_u64().unwrap();
    let stale = (index + 1000).to_string();
    fails(
        a.cli(&[
            "kv",
            "put",
            "app/size",
            "11",
            "--cas",
            "--modify-index",
            &stale,
        ]),
        "modify index is no longer",
    );
    fails(a.cli(&["kv", "get", "nothing"]), "no key \"nothing\"");

    let export = run(a, &["kv", "export", "app/"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, &export).unwrap();
    run(a, &["kv", "delete", "app/", "--recurse"]);
    assert!(!a.cli(&["kv", "get", "app/color"]).status.success());
    let imported = run(a, &["kv", "import", file.to_str().unwrap()]);
    assert_eq!(imported.lines().count(), 2, "{imported}");
    assert_eq!(run(a, &["kv", "get", "app/color"]), "blue\n");
    std::fs::write(&file, "[{\"key\": \"k\", \"value\": \"not base64!\"}]").unwrap();
    fails(
        a.cli(&["kv", "import", file.to_str().unwrap()]),
        "not base64",
    );
    assert!(
        !a.cli(&["kv", "get", "k"]).status.success(),
        "nothing half-imported"
    );

    let definition = dir.path().join("web.json");
    std::fs::write(
        &definition,
        r#"{"service": {"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"]}}"#,
    )
    .unwrap();
    run(a, &["services", "register", definition.to_str().unwrap()]);
    run(
        b,
        &["services", "register", "--name", "db", "--port", "5432"],
    );
    assert!(wait_until(Duration::from_secs(30), || {
        let services = run(b, &["catalog", "services", "--tags"]);
        services.contains("web  v1") && services.contains("db")
    }));
    let table = run(b, &["catalog", "service", "web"]);
    assert!(
        table.contains("cl0") && table.contains("8080") && table.contains("passing"),
        "{table}"
    );
    let nodes = run(b, &["catalog", "nodes", "--service", "db"]);
    assert!(nodes.contains("cl1") && !nodes.contains("cl0"), "{nodes}");

    run(
        a,
        &[
            "maint",
            "--enable",
            "--service",
            "web-1",
            "--reason",
            "upgrade",
        ],
    );
    assert!(run(a, &["maint"]).contains("service web-1: upgrade"));
    assert!(wait_until(Duration::from_secs(30), || run(
        b,
        &["catalog", "service", "web"]
    )
    .contains("critical")));
    run(a, &["maint", "--disable", "--service", "web-1"]);
    assert!(run(a, &["maint"]).contains("Nothing is in maintenance"));

    run(a, &["services", "deregister", definition.to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(30), || !run(
        b,
        &["catalog", "services"]
    )
    .contains("web")));
    fails(
        a.cli(&["services", "deregister", "nope"]),
        "Unknown service ID",
    );

    let info = run(a, &["info"]);
    assert!(
        info.contains("node = cl0") && info.contains("serf_lan:"),
        "{info}"
    );
    let info: Value = serde_json::from_str(&run(a, &["info", "--format", "json"])).unwrap();
    assert_eq!(info["Config"]["NodeName"], "cl0");
}

#[test]
fn watch_runs_the_handler_at_every_change() {
    let agents = cluster("wa", 2, &keygen());
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let handler = format!("cat >> {}; echo '--' >> {}", seen.display(), seen.display());
    let mut watch = Command::new(common::BIN)
        .args([
            "watch",
            "--type",
            "key",
            "--key",
            "app/w",
            "--handler",
            &handler,
        ])
        .env("MURMUR_HTTP_ADDR", agents[1].http.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&seen).unwrap_or_default();
    // First the current state (no key yet: null), then each write made on the other agent.
    assert!(
        wait_until(Duration::from_secs(10), || read().contains("null")),
        "{}",
        read()
    );
    run(&agents[0], &["kv", "put", "app/w", "one"]);
    assert!(
        wait_until(Duration::from_secs(30), || read().contains("\"b25l\"")),
        "{}",
        read()
    );
    run(&agents[0], &["kv", "put", "app/w", "two"]);
    // The handler writes the value, then its separator: wait for both, or a loaded machine
    // kills the watch between the two.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let seen = read();
            seen.contains("\"dHdv\"") && seen.matches("--").count() >= 3
        }),
        "{}",
        read()
    );
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        read().matches("--").count(),
        3,
        "one run per change: {}",
        read()
    );
}
