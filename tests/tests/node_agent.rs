//! The manager's node agent programs a real heddle-switch: the VLANs claimed on a provider
//! network become the uplink trunk's VLAN set, the native VLAN is kept, and a second pass
//! changes nothing. (The Kubernetes side of the agent is tested in `manager/`.)

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use heddle_api::{PortMode, VlanRange};
use heddle_manager::node_agent::{apply, plan};
use heddle_manager::trunks::Trunk;
use heddle_tests::{exclusive_cpus, require_dpdk_peers, SwitchProcess};

#[test]
fn claimed_vlans_reach_the_uplink_trunk() -> Result<()> {
    require_dpdk_peers(300)?;
    let _cpus = exclusive_cpus();
    let dir = tempfile::tempdir()?;
    let switch = SwitchProcess::start_with_ports(
        dir.path(),
        "  - {name: uplink, devargs: net_null0, mode: trunk, vlans: [100], native_vlan: 1}\n  - {name: pod, devargs: net_null1, mode: access, vlan: 300}\n",
    )?;
    let client = switch.client();
    let trunks = vec![Trunk {
        provider: "physnet1".into(),
        uplink: "uplink".into(),
        mtu: None,
        vlans: [300u16, 301, 302, 400].into_iter().collect::<BTreeSet<_>>(),
    }];
    let (changes, skipped) = plan(&trunks, &client.ports()?);
    ensure!(
        skipped.is_empty() && changes.len() == 1,
        "{changes:?} {skipped:?}"
    );
    let errors = apply(&client, &changes);
    ensure!(errors.is_empty(), "{errors:?}");
    let ports = client.ports()?;
    let uplink = ports
        .iter()
        .find(|p| p.spec.name == "uplink")
        .expect("uplink listed");
    ensure!(
        uplink.spec.mode
            == PortMode::Trunk {
                vlans: vec![VlanRange::Range((300, 302)), VlanRange::One(400)],
                native_vlan: Some(1)
            },
        "{:?}",
        uplink.spec.mode
    );
    let (again, _) = plan(&trunks, &ports);
    ensure!(
        again.is_empty(),
        "a second pass must change nothing: {again:?}"
    );
    Ok(())
}
