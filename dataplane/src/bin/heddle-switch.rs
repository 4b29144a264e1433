//! `heddle-switch`: the Heddle node daemon. A thin shell over `heddle_dataplane::daemon`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use heddle_dataplane::daemon::{self, config::DaemonConfig};

#[derive(Parser)]
#[command(
    name = "heddle-switch",
    version,
    about = "Heddle's poll-mode VLAN-aware switch (node daemon)"
)]
struct Args {
    /// YAML config; without it the built-in default is used (see --print-default-config).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the built-in config and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Check the config and exit without starting.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEDDLE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: container logs and files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if args.print_default_config {
        print!("{}", daemon::config::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    let cfg = match &args.config {
        Some(path) => DaemonConfig::load(path),
        None => DaemonConfig::parse(daemon::config::DEFAULT_CONFIG, "built-in default"),
    };
    let result = cfg.map_err(anyhow::Error::from).and_then(|cfg| {
        if args.check {
            println!("config is valid");
            return Ok(());
        }
        daemon::run(cfg)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heddle-switch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
