//! The HTTP API over TLS end to end (`--https-addr`): the CLI under murmur's flags and under
//! Consul's environment names, python-consul, client certificates required by
//! `--tls-verify-incoming`, and flags that do not fit together refused at start.

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::{Agent, BIN, Spec, free_port};
use pki::Pki;

/// An agent serving HTTPS on a free port, requiring client certificates from `pki`'s CA.
fn https_agent(name: &str, pki: &Pki) -> (Agent, SocketAddr) {
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (addr, cert, key, ca) = (
        https.to_string(),
        pki.arg("server.pem"),
        pki.arg("server.key"),
        pki.arg("ca.pem"),
    );
    let agent = Agent::start(Spec {
        name,
        key: None,
        join: None,
        extra: &[
            "--https-addr",
            &addr,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-file",
            &ca,
            "--tls-verify-incoming",
        ],
    });
    (agent, https)
}

/// `murmur ARGS` with only the environment given (none of the test's own).
fn murmur(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_cli_speaks_https_with_client_certificates_under_murmurs_flags_and_consuls_names() {
    let pki = Pki::new();
    let (agent, https) = https_agent("https", &pki);
    let url = format!("https://{https}");
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("client.pem"),
        pki.arg("client.key"),
    );

    let flags = [
        "--http-addr",
        url.as_str(),
        "--ca-file",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
    ];
    let put = murmur(
        &[&["kv", "put", "tls/color", "blue"][..], &flags].concat(),
        &[],
    );
    assert!(put.status.success(), "{}", text(&put));

    // Consul's names, as a script written for Consul sets them.
    let https_addr = https.to_string();
    let consul_env = [
        ("CONSUL_HTTP_ADDR", https_addr.as_str()),
        ("CONSUL_HTTP_SSL", "true"),
        ("CONSUL_CACERT", ca.as_str()),
        ("CONSUL_CLIENT_CERT", cert.as_str()),
        ("CONSUL_CLIENT_KEY", key.as_str()),
    ];
    let get = murmur(&["kv", "get", "tls/color"], &consul_env);
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "blue");

    // The plain listener serves the same data.
    let (status, _, body) = common::http(agent.http, "GET", "/v1/kv/tls/color?raw", b"").unwrap();
    assert_eq!((status, body.as_str()), (200, "blue"));

    // No client certificate, one from a CA the agent does not trust, or no trust in the
    // agent's certificate: refused, and the CLI says it could not reach the agent.
    let (stranger, stranger_key) = (pki.arg("stranger.pem"), pki.arg("stranger.key"));
    let other_ca = pki.arg("other-ca.pem");
    let refused: [&[&str]; 3] = [
        &["--http-addr", &url, "--ca-file", &ca],
        &[
            "--http-addr",
            &url,
            "--ca-file",
            &ca,
            "--client-cert",
            &stranger,
            "--client-key",
            &stranger_key,
        ],
        &[
            "--http-addr",
            &url,
            "--ca-file",
            &other_ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
    ];
    for flags in refused {
        let get = murmur(&[&["kv", "get", "tls/color"][..], flags].concat(), &[]);
        assert!(!get.status.success(), "{flags:?}: {}", text(&get));
        assert!(
            text(&get).contains("cannot reach the murmur agent"),
            "{}",
            text(&get)
        );
    }

    // Each refused handshake is counted (the client without a certificate may fail after the
    // handshake, on its first read, so at least the stranger's and the untrusting one's).
    let (_, _, metrics) = agent.request("GET", "/v1/agent/metrics?format=prometheus", b"");
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("murmur_http_tls_handshake_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 2.0, "{failures} handshake failures counted");

    // Plain HTTP to the HTTPS port gets no answer it could mistake for one.
    assert!(
        common::http(https, "GET", "/v1/kv/tls/color?raw", b"")
            .map_or(true, |(status, _, _)| status != 200)
    );

    // Half an identity and a missing CA file are named before anything is sent.
    let half = murmur(
        &[
            "kv",
            "get",
            "tls/color",
            "--http-addr",
            &url,
            "--client-cert",
            &cert,
        ],
        &[],
    );
    assert!(text(&half).contains("--client-key"), "{}", text(&half));
    let missing = murmur(
        &[
            "kv",
            "get",
            "tls/color",
            "--http-addr",
            &url,
            "--ca-file",
            "/nonexistent/ca.pem",
        ],
        &[],
    );
    assert!(
        text(&missing).contains("/nonexistent/ca.pem"),
        "{}",
        text(&missing)
    );
}

#[test]
fn python_consul_reads_and_writes_over_https_with_a_client_certificate() {
    if !common::has_python_consul() {
        return;
    }
    let pki = Pki::new();
    let (_agent, https) = https_agent("https-python", &pki);
    let port = https.port().to_string();
    let out = common::python_client(
        "python_consul_https.py",
        &[
            &port,
            &pki.arg("ca.pem"),
            &pki.arg("client.pem"),
            &pki.arg("client.key"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn tls_flags_that_do_not_fit_together_stop_the_agent_at_start_naming_the_flag() {
    let pki = Pki::new();
    let https = format!("127.0.0.1:{}", free_port());
    let exits = |extra: &[&str]| {
        let out = Agent::run_to_exit(Spec {
            name: "bad-tls",
            key: None,
            join: None,
            extra,
        });
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cert = pki.arg("server.pem");
    let stderr = exits(&["--https-addr", &https, "--tls-cert-file", &cert]);
    assert!(stderr.contains("--tls-key-file"), "{stderr}");
    let stderr = exits(&["--tls-cert-file", &cert]);
    assert!(stderr.contains("--https-addr"), "{stderr}");
    // A key that is not the certificate's.
    let wrong_key = pki.arg("client.key");
    let stderr = exits(&[
        "--https-addr",
        &https,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &wrong_key,
    ]);
    assert!(stderr.contains("do not make a usable pair"), "{stderr}");
    let not_pem: &Path = &pki.path("not.pem");
    std::fs::write(not_pem, "hello").unwrap();
    let stderr = exits(&[
        "--https-addr",
        &https,
        "--tls-cert-file",
        &not_pem.display().to_string(),
        "--tls-key-file",
        &pki.arg("server.key"),
    ]);
    assert!(stderr.contains("no PEM certificate"), "{stderr}");
}
