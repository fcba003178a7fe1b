//! The `murmur` binary: parses the command line and hands over to [`murmur_node::cli`].

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MURMUR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match murmur_node::node_cmd::config_file::expand_args(std::env::args().collect()) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("murmur: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = murmur_node::cli::Cli::parse_from(args);
    match murmur_node::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("murmur: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
