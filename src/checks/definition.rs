//! Consul's check definitions: the `Check`/`Checks` blocks of a service and the body of
//! `PUT /v1/agent/check/register`, matched without regard to letter case like the rest of the
//! API. Bad input names the field that is wrong.

use std::time::Duration;

use murmur_catalog::Health;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::services::{field, string};

/// Time a probe may take when the definition gives no `Timeout` (Consul's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest interval accepted: Consul raises anything shorter to one second.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the agent does to find a check's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// The application reports through `/v1/agent/check/{pass,warn,fail,update}` at least
    /// once per `ttl`; silence turns the check critical.
    Ttl { ttl: Duration },
    /// An HTTP request: 2xx passing, 429 warning, anything else critical.
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        interval: Duration,
        timeout: Duration,
    },
    /// A TCP connection: established passing, refused or timed out critical.
    Tcp {
        addr: String,
        interval: Duration,
        timeout: Duration,
    },
    /// A command (only with `--enable-script-checks`): exit 0 passing, 1 warning, else critical.
    Script {
        args: Vec<String>,
        interval: Duration,
        timeout: Duration,
    },
}

/// One check as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDefinition {
    /// Unique on this agent.
    pub id: String,
    /// Shown to humans.
    pub name: String,
    /// The service instance it belongs to; empty for a node-level check.
    pub service_id: String,
    /// How its status is found.
    pub probe: Probe,
    /// Status until the first result (Consul's default: critical).
    pub initial: Health,
    /// Deregister the service once the check has been critical this long.
    pub deregister_critical_after: Option<Duration>,
}

fn duration(object: &Map<String, Value>, name: &str) -> Result<Option<Duration>, String> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => crate::duration::parse(text).map(Some).ok_or_else(|| {
            format!("{name} {text:?} is not a duration: write it like 10s, 1m30s or 500ms")
        }),
        // Go clients may send nanoseconds as a number.
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|ns| Some(Duration::from_nanos(ns)))
            .ok_or_else(|| format!("{name} must be a duration like 10s, not {n}")),
        Some(other) => Err(format!("{name} must be a duration like 10s, not {other}")),
    }
}

fn health(text: &str) -> Result<Health, String> {
    match text {
        "" | "critical" => Ok(Health::Critical),
        "passing" => Ok(Health::Passing),
        "warning" => Ok(Health::Warning),
        other => Err(format!(
            "Status {other:?} is not a check status: use passing, warning or critical"
        )),
    }
}

fn headers(object: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    let Some(value) = field(object, "Header") else {
        return Ok(Vec::new());
    };
    let map = value
        .as_object()
        .ok_or("Header must be an object of header names to lists of values")?;
    let mut out = Vec::new();
    for (name, values) in map {
        let values = values
            .as_array()
            .ok_or_else(|| format!("Header.{name} must be a list of strings"))?;
        for v in values {
            let v = v
                .as_str()
                .ok_or_else(|| format!("Header.{name} must be a list of strings"))?;
            out.push((name.clone(), v.to_owned()));
        }
    }
    Ok(out)
}

/// Parses one check. `service` is the instance it belongs to when it came in a service
/// definition (`(id, name)`), which also gives the defaults for its id and name; `nth` tells
/// apart the ids of several checks of one service.
pub fn parse(
    value: &Value,
    service: Option<(&str, &str)>,
    nth: Option<usize>,
    script_checks: bool,
) -> Result<CheckDefinition, String> {
    let object = value
        .as_object()
        .ok_or("a check definition must be a JSON object")?;
    let service_id = match service {
        Some((id, _)) => id.to_owned(),
        None => string(object, "ServiceID")?,
    };
    let mut name = string(object, "Name")?;
    if name.is_empty() {
        match service {
            Some((_, service_name)) => name = format!("Service '{service_name}' check"),
            None => return Err("Missing check name".into()),
        }
    }
    let mut id = string(object, "CheckID")?;
    if id.is_empty() {
        id = string(object, "ID")?;
    }
    if id.is_empty() {
        id = match (service, nth) {
            (Some((sid, _)), Some(n)) => format!("service:{sid}:{n}"),
            (Some((sid, _)), None) => format!("service:{sid}"),
            (None, _) => name.clone(),
        };
    }
    let interval = duration(object, "Interval")?.map(|d| d.max(MIN_INTERVAL));
    let timeout = duration(object, "Timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    let needs_interval = |kind: &str| {
        interval
            .ok_or_else(|| format!("{kind} checks need an Interval, like \"Interval\": \"10s\""))
    };
    let http = string(object, "HTTP")?;
    let tcp = string(object, "TCP")?;
    let probe = if let Some(ttl) = duration(object, "TTL")? {
        Probe::Ttl { ttl }
    } else if !http.is_empty() {
        let method = string(object, "Method")?;
        Probe::Http {
            url: http,
            method: if method.is_empty() {
                "GET".into()
            } else {
                method.to_ascii_uppercase()
            },
            headers: headers(object)?,
            interval: needs_interval("HTTP")?,
            timeout,
        }
    } else if !tcp.is_empty() {
        Probe::Tcp {
            addr: tcp,
            interval: needs_interval("TCP")?,
            timeout,
        }
    } else if let Some(args) = field(object, "Args").or_else(|| field(object, "ScriptArgs")) {
        if !script_checks {
            return Err(
                "script checks are disabled: start the agent with --enable-script-checks to allow them"
                    .into(),
            );
        }
        let args: Vec<String> = args
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
            .filter(|a: &Vec<String>| !a.is_empty())
            .ok_or("Args must be a non-empty list of strings: the command and its arguments")?;
        Probe::Script {
            args,
            interval: needs_interval("Script")?,
            timeout,
        }
    } else {
        return Err(
            "Invalid check: one of TTL, HTTP or TCP must be set (murmur runs those kinds)".into(),
        );
    };
    Ok(CheckDefinition {
        id,
        name,
        service_id,
        probe,
        initial: health(&string(object, "Status")?)?,
        deregister_critical_after: duration(object, "DeregisterCriticalServiceAfter")?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    proptest::proptest! {
        #[test]
        fn any_body_is_a_check_or_an_error_never_a_panic(value in crate::arbitrary_json::json()) {
            let _ = parse(&value, None, None, true);
            let _ = parse(&value, Some(("web-1", "web")), Some(2), false);
        }
    }

    #[test]
    fn each_kind_in_any_letter_case_with_consuls_defaults() {
        let ttl = parse(&json!({"ttl": "15s"}), Some(("web-1", "web")), None, false).unwrap();
        assert_eq!(ttl.id, "service:web-1");
        assert_eq!(ttl.name, "Service 'web' check");
        assert_eq!(ttl.service_id, "web-1");
        assert_eq!(
            ttl.probe,
            Probe::Ttl {
                ttl: Duration::from_secs(15)
            }
        );
        assert_eq!(ttl.initial, Health::Critical);

        let http = parse(
            &json!({"Name": "api", "HTTP": "http://127.0.0.1:1/health", "Interval": "500ms",
                    "Header": {"X-A": ["1", "2"]}, "Status": "passing",
                    "DeregisterCriticalServiceAfter": "1m"}),
            None,
            None,
            false,
        )
        .unwrap();
        assert_eq!(http.id, "api");
        assert_eq!(http.initial, Health::Passing);
        assert_eq!(
            http.deregister_critical_after,
            Some(Duration::from_secs(60))
        );
        let Probe::Http {
            method,
            headers,
            interval,
            timeout,
            ..
        } = http.probe
        else {
            panic!("an HTTP check");
        };
        assert_eq!((method.as_str(), headers.len()), ("GET", 2));
        assert_eq!(interval, MIN_INTERVAL, "raised to the minimum");
        assert_eq!(timeout, DEFAULT_TIMEOUT);

        let tcp = parse(
            &json!({"CheckID": "db", "name": "db", "tcp": "127.0.0.1:5432", "interval": "10s"}),
            None,
            None,
            false,
        )
        .unwrap();
        assert_eq!(tcp.id, "db");
        assert!(matches!(tcp.probe, Probe::Tcp { .. }));
        let second = parse(&json!({"TTL": "1s"}), Some(("w", "w")), Some(2), false).unwrap();
        assert_eq!(second.id, "service:w:2");
        let script = json!({"Name": "s", "Args": ["true"], "Interval": "5s"});
        assert!(matches!(
            parse(&script, None, None, true).unwrap().probe,
            Probe::Script { .. }
        ));
        let empty = json!({"Name": "s", "Args": [], "Interval": "5s"});
        assert!(
            parse(&empty, None, None, true)
                .unwrap_err()
                .contains("non-empty list")
        );
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let cases = [
            (json!({"TTL": "10s"}), "Missing check name"),
            (
                json!({"Name": "a", "TTL": "soon"}),
                "TTL \"soon\" is not a duration",
            ),
            (json!({"Name": "a", "HTTP": "http://x"}), "need an Interval"),
            (json!({"Name": "a", "TCP": "x:1"}), "need an Interval"),
            (
                json!({"Name": "a", "Args": ["true"]}),
                "--enable-script-checks",
            ),
            (
                json!({"Name": "a", "Args": [], "Interval": "1s"}),
                "--enable-script-checks",
            ),
            (json!({"Name": "a"}), "one of TTL, HTTP or TCP"),
            (
                json!({"Name": "a", "TTL": "1s", "Status": "fine"}),
                "not a check status",
            ),
            (
                json!({"Name": "a", "HTTP": "http://x", "Interval": "1s", "Header": []}),
                "Header must be an object",
            ),
            (json!("check"), "must be a JSON object"),
        ];
        for (input, expected) in cases {
            let err = parse(&input, None, None, false).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }
}
