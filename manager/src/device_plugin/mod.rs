//! The kubelet device plugin (`heddle-manager device-plugin`): vhost-user, memif and SR-IOV VF
//! resources, served over the kubelet's device plugin API `v1beta1`.
//!
//! * [`config`]: the YAML config (`kubeletDir`, `deviceRoot`, `switchSocket`, `resources`,
//!   `vfPools`) and its validation (`--check`).
//! * [`resource`]: what one resource lists, allocates and prefers; socket devices (vhost-user,
//!   memif) and VF pools behind one enum.
//! * [`vf_pool`]: SR-IOV VF pools: selectors, sysfs discovery, VF health, `PCIDEVICE_*`.
//! * [`switch_view`]: the switch as the plugin sees it (up, full, PMD NUMA nodes), polled.
//! * [`service`]: the `DevicePlugin` gRPC service of one resource.
//! * [`serve`]: sockets, registration with the kubelet, re-registration after a kubelet
//!   restart.
//!
//! What a container that was given socket devices sees (for each kind it holds):
//! `HEDDLE_VHOST_USER_SOCKETS` / `HEDDLE_MEMIF_SOCKETS`, the container-side socket paths
//! (`/run/heddle/devices/<id>/vhost-user.sock`, ...), comma-separated in device order, and
//! `HEDDLE_VHOST_USER_DEVICES` / `HEDDLE_MEMIF_DEVICES`, the device ids in the same order;
//! each device's directory is bind-mounted read-write at `/run/heddle/devices/<id>`.
//!
//! Restarts: device ids come from the config alone (`<kind>-<index>`, PCI addresses for
//! VFs), so after a plugin restart the kubelet's checkpoint still names the same devices and
//! it never offers a device a running pod holds. The plugin never removes or empties a device
//! directory (at start or at `Allocate`); it creates missing ones only. It refuses to start
//! while another plugin answers on its socket, and removes only a stale socket file.

pub mod config;
#[cfg(test)]
mod doc_example;
pub mod resource;
pub mod serve;
pub mod service;
pub mod switch_view;
pub mod vf_pool;
