//! `murmur intention` and `murmur ca`: intentions and the mesh CA from the command line.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Client, json_of, print_json, print_table, urlencode};
use crate::agent::persist::{CaKeyFile, DataDir};
use crate::cli::{CaCommand, Format, IntentionCommand};

fn pair_query(source: &str, destination: &str) -> String {
    format!(
        "source={}&destination={}",
        urlencode(source),
        urlencode(destination)
    )
}

/// `/v1/connect/intentions/exact` for one source and destination.
fn exact_path(source: &str, destination: &str) -> String {
    format!(
        "/v1/connect/intentions/exact?{}",
        pair_query(source, destination)
    )
}

fn intention_rows(list: &[Value]) -> Vec<Vec<String>> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut rows = vec![vec![
        "Source".to_owned(),
        "Action".to_owned(),
        "Destination".to_owned(),
        "Precedence".to_owned(),
    ]];
    rows.extend(list.iter().map(|i| {
        vec![
            text(&i["SourceName"]),
            text(&i["Action"]),
            text(&i["DestinationName"]),
            i["Precedence"].to_string(),
        ]
    }));
    rows
}

fn print_intentions(list: &Value, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(list);
    }
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("No intentions.");
    } else {
        print_table(&intention_rows(&list));
    }
    Ok(())
}

/// Runs one `murmur intention` command.
pub async fn intention(command: IntentionCommand) -> anyhow::Result<()> {
    match command {
        IntentionCommand::Create {
            source,
            destination,
            allow: _,
            deny,
            description,
            replace,
            target,
        } => {
            let client = Client::new(&target)?;
            let action = if deny { "deny" } else { "allow" };
            let body = json!({
                "SourceName": source, "DestinationName": destination,
                "Action": action, "Description": description,
            });
            let body = serde_json::to_vec(&body)?;
            if replace {
                let path = exact_path(&source, &destination);
                client.put(&path, body).await?;
            } else {
                client.post("/v1/connect/intentions", body).await?;
            }
            println!("Created: {source} => {destination} ({action})");
        }
        IntentionCommand::Delete {
            source,
            destination,
            target,
        } => {
            let path = exact_path(&source, &destination);
            Client::new(&target)?.delete(&path).await?;
            println!("Intention deleted.");
        }
        IntentionCommand::Get {
            source,
            destination,
            output,
            target,
        } => {
            let path = exact_path(&source, &destination);
            let Some(found) = Client::new(&target)?.get_or_404(&path).await? else {
                bail!("no intention {source} => {destination}");
            };
            print_intentions(&Value::Array(vec![found]), output.format)?;
        }
        IntentionCommand::List { output, target } => {
            let list = Client::new(&target)?.get("/v1/connect/intentions").await?;
            print_intentions(&list, output.format)?;
        }
        IntentionCommand::Check {
            source,
            destination,
            target,
        } => {
            let path = format!(
                "/v1/connect/intentions/check?{}",
                pair_query(&source, &destination)
            );
            let answer = Client::new(&target)?.get(&path).await?;
            if answer["Allowed"].as_bool() == Some(true) {
                println!("Allowed");
            } else {
                println!("Denied");
                std::process::exit(2);
            }
        }
        IntentionCommand::Match {
            name,
            source,
            output,
            target,
        } => {
            let by = if source { "source" } else { "destination" };
            let path = format!(
                "/v1/connect/intentions/match?by={by}&name={}",
                urlencode(&name)
            );
            let answer = Client::new(&target)?.get(&path).await?;
            print_intentions(&answer[&name], output.format)?;
        }
    }
    Ok(())
}

/// Runs one `murmur ca` command.
pub async fn ca(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init {
            data_dir,
            cluster_id,
        } => {
            let data = DataDir::open(&data_dir)?;
            if !data.ca_keys()?.is_empty() {
                bail!(
                    "{} already holds a CA key (ca.json): rotate with `murmur ca rotate` on a running agent instead",
                    data_dir.display()
                );
            }
            let trust_domain = murmur_proxy::identity::TrustDomain::of_cluster(&cluster_id)?;
            let now_ms = crate::agent::runtime::wall_ms();
            let authority =
                murmur_proxy::ca::Authority::generate(&trust_domain, now_ms, rand::random())?;
            data.save_ca_keys(&[CaKeyFile {
                cert_pem: authority.root().cert_pem.clone(),
                key_pem: authority.key_pem().to_owned(),
                created_ms: now_ms,
            }])
            .context("cannot save the CA key")?;
            println!(
                "Created CA root {} for trust domain {trust_domain} in {}/ca.json.\n\
                 Start an agent with --data-dir {} --cluster-id {cluster_id}: it publishes the root and signs leaves.",
                authority.root().id,
                data_dir.display(),
                data_dir.display()
            );
        }
        CaCommand::Rotate { target } => {
            let response = Client::new(&target)?
                .put("/v1/agent/connect/ca/rotate", Vec::new())
                .await?;
            let root = json_of(response).await?;
            println!(
                "New CA root {} signs from now on; the old roots stay trusted for one leaf lifetime.",
                root["ID"].as_str().unwrap_or("?")
            );
        }
        CaCommand::Roots { output, target } => {
            let roots = Client::new(&target)?
                .get("/v1/agent/connect/ca/roots")
                .await?;
            if output.format == Format::Json {
                return print_json(&roots);
            }
            let mut rows = vec![vec![
                "ID".to_owned(),
                "Name".to_owned(),
                "Active".to_owned(),
                "NotAfter".to_owned(),
            ]];
            for root in roots["Roots"].as_array().into_iter().flatten() {
                let text = |key: &str| root[key].as_str().unwrap_or_default().to_owned();
                rows.push(vec![
                    text("ID"),
                    text("Name"),
                    root["Active"].to_string(),
                    text("NotAfter"),
                ]);
            }
            println!(
                "Trust domain: {}",
                roots["TrustDomain"].as_str().unwrap_or("?")
            );
            print_table(&rows);
        }
    }
    Ok(())
}
