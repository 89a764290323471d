//! The native SDK in a program: an application that joins the service mesh itself, with no
//! sidecar proxy in its path.
//!
//! ```text
//! # db-1 (registered on the local agent) takes mesh connections and echoes what it gets:
//! mesh_native server db-1
//! # as the service "web", send a line to "db" (a native server or a sidecar-fronted app):
//! mesh_native client web db "hello"
//! ```
//! The agent is at `$MURMUR_HTTP_ADDR` (default `127.0.0.1:8500`). Intentions decide as for
//! sidecars: `murmur intention create --allow web db`.

use murmur_proxy::native::{MeshClient, MeshListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() {
    let agent = std::env::var("MURMUR_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8500".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["server", id] => serve(&agent, id).await,
        ["client", service, destination, message] => {
            send(&agent, service, destination, message).await
        }
        _ => {
            Err("usage: mesh_native server SERVICE_ID | client SERVICE DESTINATION MESSAGE".into())
        }
    };
    if let Err(err) = result {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

async fn serve(agent: &str, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = MeshListener::bind(agent, id, "127.0.0.1:0".parse()?).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (mut stream, caller) = listener.accept().await?;
        println!("connection from {}", caller.uri());
        tokio::spawn(async move {
            let mut got = Vec::new();
            if stream.read_to_end(&mut got).await.is_ok() {
                let _ = stream.write_all(&got).await;
                let _ = stream.shutdown().await;
            }
        });
    }
}

async fn send(
    agent: &str,
    service: &str,
    destination: &str,
    message: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = MeshClient::new(agent, service).await?;
    let mut stream = client.connect(destination).await?;
    stream.write_all(message.as_bytes()).await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    println!("{reply}");
    Ok(())
}
