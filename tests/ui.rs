//! The web UI in a real browser (headless Chromium through the DevTools protocol) against a
//! three-agent cluster: the pages list what the cluster holds, follow changes live, write
//! through the API as a user would, show hostile names as text, and say why when the agent
//! cannot answer. Screenshots of each page go to `target/ui-screenshots/` (not committed).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use browser::Browser;
use common::{Agent, Spec, wait_until};
use serde_json::json;

/// The API path of the key the test makes in the UI as `ui/made "here" <b>é</b>`.
const KEY_PATH: &str = "/v1/kv/ui/made%20%22here%22%20%3Cb%3E%C3%A9%3C/b%3E";

/// A tag that would run script if the page ever put data in as markup.
const HOSTILE_TAG: &str = r#"<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>"#;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

/// The browser, or `None` (said) when Chromium is not installed; `.ci/run` installs it.
fn browser() -> Option<Browser> {
    match browser::chromium() {
        Some(binary) => Some(Browser::launch(&binary)),
        None => {
            eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
            None
        }
    }
}

fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

#[test]
fn the_ui_shows_the_cluster_live_writes_through_the_api_and_shows_hostile_names_as_text() {
    let Some(mut page) = browser() else { return };
    let key = common::keygen();
    let mut agents = common::cluster_with("ui", 3, &key, &[]);
    let ui = format!("http://{}/ui/", agents[0].http);

    let code = Arc::new(AtomicU16::new(200));
    let endpoint = common::health_server(code.clone());
    let web = json!({
        "Name": "web", "Port": 8080, "Tags": ["v1", HOSTILE_TAG],
        "Check": {"HTTP": format!("http://{endpoint}/health"), "Interval": "1s"},
    });
    let (status, _, body) = agents[1].request(
        "PUT",
        "/v1/agent/service/register",
        web.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let db = json!({"Name": "db", "Port": 5432});
    agents[2].request(
        "PUT",
        "/v1/agent/service/register",
        db.to_string().as_bytes(),
    );

    // Services: both listed, web passing, its hostile tag shown as text and never run.
    page.open(&format!("{ui}#/services"));
    let listed = page.wait_for(
        r#"document.querySelector('[data-service="web"] td.passing')?.textContent === '1'
           && document.querySelector('[data-service="db"]')"#,
        Duration::from_secs(15),
    );
    assert!(listed.is_some(), "services page: {}", page.text());
    let tag_text = page.eval(
        r#"[...document.querySelectorAll('[data-service="web"] .tag')].map(t => t.textContent)"#,
    );
    assert!(
        tag_text.as_array().unwrap().contains(&json!(HOSTILE_TAG)),
        "{tag_text}"
    );
    assert_eq!(
        page.eval("window.pwned === undefined"),
        json!(true),
        "the tag ran as script"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('[data-service] img, [data-service] script').length"),
        json!(0)
    );
    page.screenshot(&screenshots().join("services.png"));

    // The web service's page; its check fails: the page turns it critical without a reload.
    page.open(&format!("{ui}#/services/web"));
    assert!(
        page.wait_for(
            r#"document.querySelector('[data-instance="web"]')?.dataset.status === 'passing'"#,
            Duration::from_secs(10)
        )
        .is_some(),
        "service page: {}",
        page.text()
    );
    code.store(500, Ordering::SeqCst);
    let turned = page.wait_for(
        r#"document.querySelector('[data-instance="web"]')?.dataset.status === 'critical'
           && [...document.querySelectorAll('[data-instance="web"] .output')].some(o => o.textContent.includes('500'))"#,
        Duration::from_secs(3),
    );
    assert!(turned.is_some(), "not critical within 3 s: {}", page.text());
    eprintln!(
        "a failing HTTP check (interval 1s) turned red on the page after {:?}",
        turned.unwrap()
    );
    page.screenshot(&screenshots().join("service.png"));

    // Nodes: the three members, alive, with their services.
    page.open(&format!("{ui}#/nodes"));
    assert!(
        page.wait_for(
            r#"document.querySelectorAll('[data-node] .status.alive').length === 3"#,
            Duration::from_secs(10)
        )
        .is_some(),
        "nodes page: {}",
        page.text()
    );
    page.screenshot(&screenshots().join("nodes.png"));

    // Key/value: a key made in the UI (quotes, markup and unicode in its name) is read over
    // the API on another agent.
    page.open(&format!("{ui}#/kv/"));
    page.wait_for(
        "document.getElementById('kv-create')",
        Duration::from_secs(5),
    );
    page.eval(
        r#"document.getElementById('kv-new-key').value = 'ui/made "here" <b>é</b>';
                 document.getElementById('kv-new-value').value = 'from the ui';
                 document.getElementById('kv-new-flags').value = '42';
                 document.getElementById('kv-create').click(); true"#,
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (status, _, body) = agents[2].request("GET", KEY_PATH, b"");
            status == 200 && body.contains("\"Flags\":42")
        }),
        "the key made in the UI did not reach another agent"
    );
    let (_, _, raw) = agents[2].request("GET", &format!("{KEY_PATH}?raw"), b"");
    assert_eq!(raw, "from the ui");
    // The UI went to the key's page; someone else changes the key: the UI's save is refused
    // with the reason, and their value stays.
    assert!(
        page.wait_for(
            "document.getElementById('kv-value')?.value === 'from the ui'",
            Duration::from_secs(5)
        )
        .is_some(),
        "key page: {}",
        page.text()
    );
    page.screenshot(&screenshots().join("kv.png"));
    agents[1].request("PUT", KEY_PATH, b"someone else's");
    page.eval(
        r#"document.getElementById('kv-value').value = 'mine';
                 document.getElementById('kv-save').click(); true"#,
    );
    assert!(
        page.wait_for(r#"!document.getElementById('error').hidden
                         && document.getElementById('error').textContent.includes('changed by someone else')"#,
            Duration::from_secs(5))
            .is_some(),
        "no conflict shown: {}",
        page.text()
    );
    let (_, _, raw) = agents[0].request("GET", &format!("{KEY_PATH}?raw"), b"");
    assert_eq!(raw, "someone else's", "the UI overwrote a concurrent write");

    // Intentions: a deny made in the UI is what the API's check answers, and the UI's own
    // check says so too.
    page.open(&format!("{ui}#/intentions"));
    page.wait_for(
        "document.getElementById('intention-create')",
        Duration::from_secs(5),
    );
    page.eval(
        r#"document.getElementById('intention-source').value = 'web';
                 document.getElementById('intention-destination').value = 'db';
                 document.getElementById('intention-action').value = 'deny';
                 document.getElementById('intention-description').value = '<b>no</b>';
                 document.getElementById('intention-create').click(); true"#,
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, _, body) = agents[1].request(
                "GET",
                "/v1/connect/intentions/check?source=web&destination=db",
                b"",
            );
            body.contains("\"Allowed\":false")
        }),
        "the deny made in the UI is not in force"
    );
    assert!(
        page.wait_for(
            r#"document.querySelector('[data-intention="web => db"] .deny')"#,
            Duration::from_secs(5)
        )
        .is_some(),
        "intention not listed: {}",
        page.text()
    );
    page.eval(
        r#"document.getElementById('check-source').value = 'web';
                 document.getElementById('check-destination').value = 'db';
                 document.getElementById('check-run').click(); true"#,
    );
    assert!(
        page.wait_for(
            "document.getElementById('check-result').dataset.allowed === 'false'",
            Duration::from_secs(5)
        )
        .is_some(),
        "check a pair: {}",
        page.text()
    );
    page.screenshot(&screenshots().join("intentions.png"));

    // Topology of db: web calls it, under a deny.
    page.open(&format!("{ui}#/topology/db"));
    assert!(
        page.wait_for(r#"document.querySelector('[data-pair="web => db"] .deny') && document.querySelector('svg.topology')"#,
            Duration::from_secs(10))
            .is_some(),
        "topology: {}",
        page.text()
    );
    page.screenshot(&screenshots().join("topology.png"));

    // The agent goes away: the page says so instead of going blank.
    page.open(&format!("{ui}#/services"));
    page.wait_for(
        r#"document.querySelector('[data-service="db"]')"#,
        Duration::from_secs(10),
    );
    agents[0].kill9();
    assert!(
        page.wait_for(
            r#"!document.getElementById('error').hidden
                         && document.getElementById('error').textContent.length > 0"#,
            Duration::from_secs(40)
        )
        .is_some(),
        "no error shown once the agent is gone: {}",
        page.text()
    );
    page.screenshot(&screenshots().join("agent-gone.png"));
}

#[test]
fn with_acls_the_ui_asks_for_a_token_and_shows_only_what_it_may_read() {
    let Some(mut page) = browser() else { return };
    let agent = Agent::start(Spec {
        name: "ui-acl",
        key: None,
        join: None,
        extra: &["--acl-enabled", "--acl-default-policy", "deny"],
    });
    let (_, _, boot) = agent.request("PUT", "/v1/acl/bootstrap", b"");
    let root: serde_json::Value = serde_json::from_str(&boot).unwrap();
    let root = root["SecretID"].as_str().unwrap().to_owned();
    let as_root = |method: &str, path: &str, body: &str| {
        common::http_as(agent.http, method, path, body.as_bytes(), Some(&root)).unwrap()
    };
    for name in ["web", "db"] {
        let (status, _, body) = as_root(
            "PUT",
            "/v1/agent/service/register",
            &json!({"Name": name, "Port": 80}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
    }
    let rules = r#"service "web" { policy = "read" }"#;
    as_root(
        "PUT",
        "/v1/acl/policy",
        &json!({"Name": "see-web", "Rules": rules}).to_string(),
    );
    let (_, _, token) = as_root(
        "PUT",
        "/v1/acl/token",
        &json!({"Policies": [{"Name": "see-web"}]}).to_string(),
    );
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_owned();

    // Without a token: nothing listed, and the token form is offered.
    page.open(&format!("http://{}/ui/#/services", agent.http));
    assert!(
        page.wait_for("document.querySelector('#services p.note') && !document.getElementById('token-form').hidden || document.querySelector('#services p.note')",
            Duration::from_secs(10))
            .is_some(),
        "{}",
        page.text()
    );
    assert_eq!(
        page.eval("document.querySelectorAll('[data-service]').length"),
        json!(0)
    );
    // With the token: web, and not db.
    page.eval(&format!(
        "document.getElementById('token-input').value = {}; document.getElementById('token-form').requestSubmit(); true",
        js(&secret)
    ));
    assert!(
        page.wait_for(
            r#"document.querySelector('[data-service="web"]')"#,
            Duration::from_secs(10)
        )
        .is_some(),
        "{}",
        page.text()
    );
    assert_eq!(
        page.eval(r#"document.querySelectorAll('[data-service="db"]').length"#),
        json!(0)
    );
    // A page the token may not read says why.
    page.open(&format!("http://{}/ui/#/topology/db", agent.http));
    assert!(
        page.wait_for(
            r#"document.getElementById('error').textContent.includes('Permission denied')"#,
            Duration::from_secs(10)
        )
        .is_some(),
        "{}",
        page.text()
    );
    page.screenshot(&screenshots().join("acl-denied.png"));
}

#[test]
fn ui_false_turns_the_ui_off() {
    let agent = Agent::start(Spec {
        name: "no-ui",
        key: None,
        join: None,
        extra: &["--ui=false"],
    });
    let (status, _, _) = agent.request("GET", "/ui/", b"");
    assert_eq!(status, 404);
    let on = Agent::start(Spec {
        name: "ui-on",
        key: None,
        join: None,
        extra: &[],
    });
    let (status, headers, _) = on.request("GET", "/", b"");
    assert_eq!(status, 307);
    assert_eq!(
        common::header(&headers, "location").as_deref(),
        Some("/ui/")
    );
    let (status, headers, body) = on.request("GET", "/ui/", b"");
    assert_eq!(status, 200);
    assert!(body.contains("<script type=\"module\" src=\"/ui/app.js\">"));
    let csp = common::header(&headers, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let (status, headers, _) = on.request("GET", "/ui/app.js", b"");
    assert_eq!(status, 200);
    assert!(
        common::header(&headers, "content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
}

#[test]
fn the_topology_gathers_each_pairs_figures_from_the_agents_running_the_proxies() {
    let key = common::keygen();
    let agents = common::cluster_with("topo", 3, &key, &[]);
    let app = common::echo_app();
    agents[2].register_db_with_sidecar(app.addr.port());
    let upstream = agents[1].register_with_upstream("web", 8080, "db", common::free_port());
    let out = agents[0].cli(&["intention", "create", "-allow", "web", "db"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(30), || common::carries(upstream)),
        "web's sidecar never carried to db"
    );
    let payload = vec![7u8; 100_000];
    for _ in 0..3 {
        assert_eq!(common::round_trip(upstream, &payload).unwrap(), payload);
    }

    // Asked of the agent that runs neither proxy: the figures come from the other two.
    let topology = || {
        let (status, _, body) =
            agents[0].request("GET", "/v1/internal/ui/service-topology/db", b"");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let web_calls_db = |t: &serde_json::Value| {
        t["Downstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["Name"] == "web")
            .cloned()
    };
    let mut last = json!(null);
    let counted = wait_until(Duration::from_secs(10), || {
        last = topology();
        web_calls_db(&last).is_some_and(|l| {
            l["Figures"]["connections"].as_f64() >= Some(4.0)
                && l["Figures"]["bytes_out"].as_f64() >= Some(300_000.0)
                && l["Figures"]["bytes_in"].as_f64() >= Some(300_000.0)
        })
    });
    assert!(counted, "{last:#}");
    let link = web_calls_db(&last).unwrap();
    assert_eq!(link["Declared"], true, "{link}");
    assert_eq!(link["Intention"], "allow", "{link}");
    assert!(
        link["Figures"]["connect_p50_ms"].as_f64().is_some(),
        "{link}"
    );
    assert_eq!(last["Unreachable"], json!([]), "{last}");
    // Seen from web's side: db is its upstream.
    let (_, _, body) = agents[0].request("GET", "/v1/internal/ui/service-topology/web", b"");
    let web: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(web["Upstreams"][0]["Name"], "db", "{web}");

    // And drawn in the browser.
    let Some(mut page) = browser() else { return };
    page.open(&format!("http://{}/ui/#/topology/db", agents[0].http));
    assert!(
        page.wait_for(
            r#"document.querySelector('[data-pair="web => db"]')?.textContent.includes('conns')"#,
            Duration::from_secs(10)
        )
        .is_some(),
        "{}",
        page.text()
    );
    page.screenshot(&screenshots().join("topology-traffic.png"));
}
