//! The kubelet device plugin (`heddle-manager device-plugin`): vhost-user, memif and SR-IOV VF resources.

pub mod vf_pool;
