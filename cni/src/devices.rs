//! Where a device-plugin device lives: the contract between Heddle's kubelet device plugin
//! (`heddle-manager device-plugin`, which advertises and allocates the devices) and heddle-cni
//! (which puts the switch's socket inside the device the kubelet chose).
//!
//! A vhost-user or memif device is a directory. On the host it is
//! `<device root>/<device id>` (default root [`DEFAULT_DEVICE_ROOT`]); in every container that
//! was given the device it is bind-mounted at `/run/heddle/devices/<device id>`
//! ([`container_dir`]). The socket inside has a fixed name per kind ([`socket_name`]), so the
//! plugin can name it in the container's environment at `Allocate` time, before heddle-cni has
//! created it. Device ids are `<kind>-<index>` (e.g. `vhost-user-3`): stable across plugin
//! restarts, unique across kinds, and safe as a single path component ([`valid_device_id`]).

use std::path::{Path, PathBuf};

/// Host directory under which each vhost-user / memif device has its own directory.
pub const DEFAULT_DEVICE_ROOT: &str = "/run/heddle/devices";
/// Where a container finds its devices' directories.
pub const CONTAINER_DEVICE_ROOT: &str = "/run/heddle/devices";

/// The socket kinds a device plugin hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    /// A vhost-user port (the switch's native backend or DPDK's net_vhost).
    VhostUser,
    /// A memif port.
    Memif,
}

impl DeviceKind {
    /// The kind's name, as used in device ids, CNI configs and resource names.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::VhostUser => "vhost-user",
            DeviceKind::Memif => "memif",
        }
    }

    /// The kind a device id belongs to (`vhost-user-3` is a vhost-user device).
    pub fn of_device(id: &str) -> Option<DeviceKind> {
        [DeviceKind::VhostUser, DeviceKind::Memif]
            .into_iter()
            .find(|k| {
                id.strip_prefix(k.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }
}

/// The id of the `index`-th device of a kind.
pub fn device_id(kind: DeviceKind, index: u32) -> String {
    format!("{}-{index}", kind.as_str())
}

/// True when `id` is a device id this contract produces: `<kind>-<decimal index>`. Anything
/// else (a path, `..`, an empty string) is refused before it is joined to a directory.
pub fn valid_device_id(id: &str) -> bool {
    DeviceKind::of_device(id).is_some()
}

/// The socket's file name inside a device directory.
pub fn socket_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::VhostUser => "vhost-user.sock",
        DeviceKind::Memif => "memif.sock",
    }
}

/// The device's directory on the host.
pub fn host_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// The device's directory inside a container that holds it.
pub fn container_dir(id: &str) -> PathBuf {
    Path::new(CONTAINER_DEVICE_ROOT).join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_round_trip_and_hostile_ids_are_refused() {
        let id = device_id(DeviceKind::Memif, 12);
        assert_eq!(id, "memif-12");
        assert_eq!(DeviceKind::of_device(&id), Some(DeviceKind::Memif));
        assert_eq!(
            DeviceKind::of_device("vhost-user-0"),
            Some(DeviceKind::VhostUser)
        );
        for bad in [
            "",
            "vhost-user",
            "vhost-user-",
            "memif-1/..",
            "../memif-1",
            "memif-x",
            "vf-1",
        ] {
            assert!(!valid_device_id(bad), "{bad:?} was accepted");
        }
        assert_eq!(
            host_dir(Path::new(DEFAULT_DEVICE_ROOT), "vhost-user-3"),
            PathBuf::from("/run/heddle/devices/vhost-user-3")
        );
        assert_eq!(
            container_dir("vhost-user-3").join(socket_name(DeviceKind::VhostUser)),
            PathBuf::from("/run/heddle/devices/vhost-user-3/vhost-user.sock")
        );
    }
}
