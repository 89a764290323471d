//! `murmur acl`: bootstrap, policies and tokens, through the agent's `/v1/acl/*`.

use anyhow::Context;
use serde_json::{Value, json};

use super::{Client, json_of};
use crate::cli::{AclCommand, AclPolicyCommand, AclTokenCommand};

/// Prints a token as Consul's CLI does.
fn print_token(token: &Value) {
    println!(
        "AccessorID:       {}",
        token["AccessorID"].as_str().unwrap_or("")
    );
    if let Some(secret) = token["SecretID"].as_str() {
        println!("SecretID:         {secret}");
    }
    println!(
        "Description:      {}",
        token["Description"].as_str().unwrap_or("")
    );
    println!(
        "Local:            {}",
        token["Local"].as_bool().unwrap_or(false)
    );
    println!(
        "Create Time:      {}",
        token["CreateTime"].as_str().unwrap_or("")
    );
    println!("Policies:");
    for policy in token["Policies"].as_array().into_iter().flatten() {
        println!(
            "   {} - {}",
            policy["ID"].as_str().unwrap_or(""),
            policy["Name"].as_str().unwrap_or("")
        );
    }
}

/// Runs one `murmur acl` command.
pub async fn run(command: AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::Bootstrap { target } => {
            let response = Client::new(&target)?
                .put("/v1/acl/bootstrap", Vec::new())
                .await?;
            print_token(&json_of(response).await?);
        }
        AclCommand::Policy(AclPolicyCommand::Create {
            name,
            rules,
            description,
            target,
        }) => {
            let rules = match rules.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the rules file {path}"))?,
                None => rules,
            };
            let body = json!({"Name": name, "Rules": rules, "Description": description});
            let response = Client::new(&target)?
                .put("/v1/acl/policy", body.to_string().into_bytes())
                .await?;
            let policy = json_of(response).await?;
            println!("ID:           {}", policy["ID"].as_str().unwrap_or(""));
            println!("Name:         {}", policy["Name"].as_str().unwrap_or(""));
            println!("Rules:\n{}", policy["Rules"].as_str().unwrap_or(""));
        }
        AclCommand::Policy(AclPolicyCommand::List { target }) => {
            let list = Client::new(&target)?.get("/v1/acl/policies").await?;
            for policy in list.as_array().into_iter().flatten() {
                println!(
                    "{}  {}",
                    policy["ID"].as_str().unwrap_or(""),
                    policy["Name"].as_str().unwrap_or("")
                );
            }
        }
        AclCommand::Token(AclTokenCommand::Create {
            policy_names,
            description,
            target,
        }) => {
            let policies: Vec<Value> = policy_names.iter().map(|n| json!({"Name": n})).collect();
            let body = json!({"Description": description, "Policies": policies});
            let response = Client::new(&target)?
                .put("/v1/acl/token", body.to_string().into_bytes())
                .await?;
            print_token(&json_of(response).await?);
        }
        AclCommand::Token(AclTokenCommand::List { target }) => {
            let list = Client::new(&target)?.get("/v1/acl/tokens").await?;
            for token in list.as_array().into_iter().flatten() {
                print_token(token);
                println!();
            }
        }
        AclCommand::Token(AclTokenCommand::Delete {
            accessor_id,
            target,
        }) => {
            Client::new(&target)?
                .delete(&format!("/v1/acl/token/{accessor_id}"))
                .await?;
            println!("Token {accessor_id:?} deleted");
        }
    }
    Ok(())
}
