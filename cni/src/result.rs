//! The CNI result (`interfaces`, `ips`, `routes`, `dns`) and its rendering for the version the
//! runtime asked for: 0.4.0 adds `version` to each IP, 1.1.0 adds `socketPath` and `pciID`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{code, CniError};

/// One interface of the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name (CNI_IFNAME in the pod, or the host end).
    pub name: String,
    /// MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.0.0+ readers ignore it when they do not know it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for a pod interface; absent for host ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// vhost-user / memif socket (CNI 1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI address of a VF (CNI 1.1.0).
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One IP of the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `addr/prefix`.
    pub address: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination `addr/prefix`.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A CNI result, version-independent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// IPs.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS, passed through from IPAM or prevResult.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub dns: Value,
}

impl CniResult {
    /// Reads a result of any supported version (an IPAM reply or a `prevResult`).
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "a CNI result (prevResult or the IPAM plugin's reply) has the wrong shape",
                e.to_string(),
            )
        })
    }

    /// Appends `iface` and returns its index.
    pub fn push_interface(&mut self, iface: Interface) -> usize {
        self.interfaces.push(iface);
        self.interfaces.len() - 1
    }

    /// The JSON of this result for `cni_version`.
    pub fn render(&self, cni_version: &str) -> Value {
        let mut v = serde_json::to_value(self).expect("results always serialise");
        v["cniVersion"] = Value::from(cni_version);
        if cni_version != "1.1.0" {
            for i in v["interfaces"].as_array_mut().into_iter().flatten() {
                if let Some(o) = i.as_object_mut() {
                    o.remove("socketPath");
                    o.remove("pciID");
                }
            }
        }
        if cni_version == "0.4.0" {
            for ip in v["ips"].as_array_mut().into_iter().flatten() {
                let six = ip["address"].as_str().is_some_and(|a| a.contains(':'));
                ip["version"] = Value::from(if six { "6" } else { "4" });
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        let mut r = CniResult::default();
        let i = r.push_interface(Interface {
            name: "net1".into(),
            mac: Some("02:00:00:00:00:01".into()),
            mtu: Some(1500),
            sandbox: Some("/run/netns/x".into()),
            socket_path: Some("/run/heddle/pods/abc/net1.sock".into()),
            pci_id: None,
        });
        r.ips.push(IpConfig {
            address: "10.1.0.5/24".into(),
            gateway: None,
            interface: Some(i),
        });
        r
    }

    #[test]
    fn renders_per_version() {
        let r = sample();
        let v11 = r.render("1.1.0");
        assert_eq!(
            v11["interfaces"][0]["socketPath"],
            "/run/heddle/pods/abc/net1.sock"
        );
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert!(v11["ips"][0].get("version").is_none());
        let v10 = r.render("1.0.0");
        assert!(v10["interfaces"][0].get("socketPath").is_none());
        let v04 = r.render("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["cniVersion"], "0.4.0");
    }

    #[test]
    fn reads_old_and_new_results() {
        let old = serde_json::json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24","gateway":"10.0.0.1"}],"dns":{}});
        let r = CniResult::from_value(&old).unwrap();
        assert_eq!(r.ips[0].gateway.as_deref(), Some("10.0.0.1"));
        assert!(CniResult::from_value(&serde_json::json!({"ips":"x"})).is_err());
    }
}
