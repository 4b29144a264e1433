//! The kubelet's gRPC APIs Heddle speaks: the device plugin API (`v1beta1`: Heddle serves
//! `DevicePlugin`, calls `Registration`) and the PodResources API (`v1`: heddle-cni asks which
//! devices a pod holds). Generated at build time from `proto/`; test kubelets use the other
//! side of the same code (Registration and PodResourcesLister servers, DevicePlugin client).
//!
//! Also the small pieces every user needs: the kubelet's well-known paths and a Unix socket
//! channel for tonic.

use std::path::{Path, PathBuf};

/// Device plugin API v1beta1.
#[allow(missing_docs, clippy::all)]
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");

    /// The API version a plugin registers with.
    pub const VERSION: &str = "v1beta1";
    /// A device the kubelet may hand out.
    pub const HEALTHY: &str = "Healthy";
    /// A device the kubelet must not hand out.
    pub const UNHEALTHY: &str = "Unhealthy";
}

/// PodResources API v1.
#[allow(missing_docs, clippy::all)]
pub mod podresources {
    tonic::include_proto!("v1");
}

/// The kubelet's device plugin directory; plugins put their sockets here.
pub const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's registration socket's file name inside [`DEVICE_PLUGIN_DIR`].
pub const KUBELET_SOCKET_NAME: &str = "kubelet.sock";
/// The kubelet's PodResources socket.
pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// A tonic channel over a Unix socket (gRPC needs an `http://` URI; it is never resolved).
pub async fn unix_channel(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    tonic::transport::Endpoint::from_static("http://kubelet.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}
