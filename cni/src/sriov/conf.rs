//! The `sriov` part of a network config and the VFs an ADD may take: parsed and checked,
//! no I/O.

use super::settings::VfSettings;
use super::sysfs::valid_pci_address;
use crate::error::CniError;

/// The `sriov` part of a network config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SriovConf {
    /// PF-side settings asked for (`vlan`, `vlanQoS`, `spoofchk`, `trust`, `minTxRate`,
    /// `maxTxRate`); the MAC is added at ADD when `admin_mac` is set.
    pub settings: VfSettings,
    /// Also set the pod's MAC as the VF's administrative MAC on the PF (default true).
    pub admin_mac: bool,
    /// Device plugin resource (`intel.com/sriov_a`): selects `PCIDEVICE_INTEL_COM_SRIOV_A`.
    pub resource_name: Option<String>,
}

/// The `PCIDEVICE_*` variable a device plugin sets for `resource` (`intel.com/sriov_a` ->
/// `PCIDEVICE_INTEL_COM_SRIOV_A`).
pub fn pcidevice_var(resource: &str) -> String {
    let mut v = String::from("PCIDEVICE_");
    v.extend(resource.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    v
}

/// The VFs an ADD may use, in order: `runtimeConfig.deviceID`, else the config's `deviceID`,
/// else the addresses in the `PCIDEVICE_*` variable (the one named by `resourceName`, or the
/// only one there is). Code 7 when there is none, or an address is not `dddd:bb:dd.f`.
pub fn device_candidates(
    runtime_id: Option<&str>,
    config_id: Option<&str>,
    resource_name: Option<&str>,
    env: &[(String, String)],
) -> Result<Vec<String>, CniError> {
    let list: Vec<String> = if let Some(id) = runtime_id.or(config_id) {
        vec![id.trim().to_owned()]
    } else {
        let vars: Vec<&(String, String)> = match resource_name {
            Some(r) => {
                let name = pcidevice_var(r);
                env.iter().filter(|(k, _)| *k == name).collect()
            }
            None => env
                .iter()
                .filter(|(k, _)| k.starts_with("PCIDEVICE_"))
                .collect(),
        };
        match vars.as_slice() {
            [(_, v)] => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            [] => vec![],
            many => {
                return Err(CniError::config(
                    "several PCIDEVICE_* variables are set: set resourceName to the device plugin resource of this network (e.g. intel.com/sriov_a)",
                    many.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
                ))
            }
        }
    };
    if list.is_empty() {
        return Err(CniError::config(
            "kind sriov needs a VF: deviceID in runtimeConfig (Multus fills it from the device plugin) or in the config, or a PCIDEVICE_* variable",
            "none was given",
        ));
    }
    if let Some(bad) = list.iter().find(|a| !valid_pci_address(a)) {
        return Err(CniError::config(
            "deviceID must be a PCI address like 0000:03:02.0",
            format!("got {bad:?}"),
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn device_id_precedence_and_the_device_plugin_environment() {
        let e = env(&[
            ("PCIDEVICE_INTEL_COM_SRIOV_A", "0000:03:02.0,0000:03:02.1"),
            ("PCIDEVICE_INTEL_COM_SRIOV_B", "0000:04:02.0"),
        ]);
        assert_eq!(
            device_candidates(Some("0000:01:00.1"), Some("0000:01:00.2"), None, &e).unwrap(),
            ["0000:01:00.1"]
        );
        assert_eq!(
            device_candidates(None, Some("0000:01:00.2"), None, &e).unwrap(),
            ["0000:01:00.2"]
        );
        assert_eq!(
            device_candidates(None, None, Some("intel.com/sriov_a"), &e).unwrap(),
            ["0000:03:02.0", "0000:03:02.1"]
        );
        assert_eq!(device_candidates(None, None, None, &e).unwrap_err().code, 7);
        assert_eq!(
            device_candidates(None, None, None, &e[1..]).unwrap(),
            ["0000:04:02.0"]
        );
        assert_eq!(
            device_candidates(None, None, None, &[]).unwrap_err().code,
            7
        );
        assert_eq!(
            device_candidates(Some("../../x"), None, None, &[])
                .unwrap_err()
                .code,
            7
        );
    }
}
