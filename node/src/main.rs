//! The `murmur` binary: parses the command line and hands over to [`murmur_node::cmd`].

use murmur_node::errors::chain;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MURMUR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match murmur_node::cmd::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(murmur_node::cmd::ParseError::Clap(err)) => err.exit(),
        Err(err) => {
            eprintln!("murmur: {}", chain(&err));
            return std::process::ExitCode::FAILURE;
        }
    };
    match murmur_node::cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("murmur: {}", chain(err.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
