//! The `murmur` binary: the agent and the CLI that talks to it.

mod agent;
#[cfg(test)]
mod arbitrary_json;
mod checks;
mod cli;
mod client;
mod connect;
mod dns;
mod duration;
mod forward;
mod http;
mod math;
mod services;
mod sim;
mod ui;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_consul_style();
    // The simulator's nodes would log every fault they live through; its report says enough.
    let default_level = if matches!(cli.command, Command::Sim(_)) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MURMUR_LOG").unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Command::Sim(args) = &cli.command {
        // No runtime, no sockets: the simulator is single-threaded and deterministic.
        return sim::run(args);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    match &cli.command {
        Command::Connect(cli::ConnectCommand::Proxy(args)) => {
            runtime.worker_threads(usize::from(args.worker_threads));
        }
        Command::Connect(cli::ConnectCommand::Gateway(args)) => {
            runtime.worker_threads(usize::from(args.worker_threads));
        }
        _ => {}
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => {
                http::install_metrics();
                agent::run(*args).await
            }
            command => client::run(command).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
