//! What heddle-cni needs from the node daemon, as a trait: the real [`heddle_api::Client`]
//! in the binary, a double in unit tests.

use heddle_api::{Client, PortSpec};

use crate::error::CniError;

/// The node daemon's port calls.
pub trait Switch {
    /// True when the daemon answers and takes port requests.
    fn ready(&self) -> Result<bool, CniError>;
    /// Creates the port (idempotent for the same spec).
    fn add_port(&self, spec: &PortSpec) -> Result<(), CniError>;
    /// Removes the port (succeeds when it is gone).
    fn remove_port(&self, name: &str) -> Result<(), CniError>;
    /// Does a port with this name exist?
    fn has_port(&self, name: &str) -> Result<bool, CniError>;
}

impl Switch for Client {
    fn ready(&self) -> Result<bool, CniError> {
        Ok(self.health()?.ready)
    }

    fn add_port(&self, spec: &PortSpec) -> Result<(), CniError> {
        Client::add_port(self, spec)?;
        Ok(())
    }

    fn remove_port(&self, name: &str) -> Result<(), CniError> {
        Client::remove_port(self, name)?;
        Ok(())
    }

    fn has_port(&self, name: &str) -> Result<bool, CniError> {
        Ok(self.ports()?.iter().any(|p| p.spec.name == name))
    }
}
