//! `heddle-cni`: reads the CNI environment and stdin, runs the command, prints the JSON reply
//! on stdout (an error reply with a non-zero exit status on failure).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use heddle_cni::config::{requested_version, SUPPORTED_VERSIONS};
use heddle_cni::error::{code, CniError};
use heddle_cni::switch::Switch;
use heddle_cni::{plugin, Invocation};

fn connect(path: &Path) -> Box<dyn Switch> {
    Box::new(heddle_api::Client::new(path).with_timeout(Duration::from_secs(20)))
}

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = requested_version(&stdin)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_owned());
    let outcome = match read {
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            "cannot read the network configuration from stdin",
            e.to_string(),
        )),
        Ok(_) => Invocation::from_env(|k| std::env::var(k).ok())
            .map(|inv| inv.with_pci_devices(std::env::vars()))
            .and_then(|inv| plugin::run(&inv, &stdin, &connect)),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(reply)) => {
            let _ = writeln!(out, "{reply}");
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("heddle-cni: {e}");
            let _ = writeln!(out, "{}", e.to_json(&version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}
