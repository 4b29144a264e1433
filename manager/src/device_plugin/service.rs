//! The `DevicePlugin` gRPC service of one resource (device plugin API `v1beta1`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use heddle_kubelet_api::deviceplugin::{
    device_plugin_server::DevicePlugin, AllocateRequest, AllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::resource::Resource;
use super::switch_view::SwitchView;

/// How often `ListAndWatch` re-reads device health that the switch view does not carry
/// (a VF's PF state in sysfs). A change is sent at once; an unchanged list is not sent.
pub const HEALTH_RECHECK: Duration = Duration::from_secs(1);

/// The options every Heddle resource registers with.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// One resource's service.
pub struct PluginService {
    resource: Arc<Resource>,
    switch: watch::Receiver<SwitchView>,
    /// Becomes true when this server instance stops (its `ListAndWatch` streams end then, so
    /// the server can shut down while the kubelet holds a stream).
    stop: watch::Receiver<bool>,
}

impl PluginService {
    /// A service for `resource`.
    pub fn new(
        resource: Arc<Resource>,
        switch: watch::Receiver<SwitchView>,
        stop: watch::Receiver<bool>,
    ) -> PluginService {
        PluginService {
            resource,
            switch,
            stop,
        }
    }
}

struct Watch {
    resource: Arc<Resource>,
    switch: watch::Receiver<SwitchView>,
    stop: watch::Receiver<bool>,
    last: Option<Vec<Device>>,
    recheck: tokio::time::Interval,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let mut recheck = tokio::time::interval(HEALTH_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let state = Watch {
            resource: self.resource.clone(),
            switch: self.switch.clone(),
            stop: self.stop.clone(),
            last: None,
            recheck,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            loop {
                if *s.stop.borrow() {
                    return None;
                }
                let view = s.switch.borrow_and_update().clone();
                let devices = s.resource.devices(&view);
                if s.last.as_ref() != Some(&devices) {
                    let healthy = devices
                        .iter()
                        .filter(|d| d.health == heddle_kubelet_api::deviceplugin::HEALTHY)
                        .count();
                    tracing::info!(
                        resource = s.resource.name(),
                        devices = devices.len(),
                        healthy,
                        "ListAndWatch update"
                    );
                    s.last = Some(devices.clone());
                    return Some((Ok(ListAndWatchResponse { devices }), s));
                }
                tokio::select! {
                    changed = s.switch.changed() => if changed.is_err() { return None },
                    _ = s.recheck.tick() => {}
                    changed = s.stop.changed() => if changed.is_err() { return None },
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let view = self.switch.borrow().clone();
        let mut out = Vec::new();
        for c in request.into_inner().container_requests {
            let size = usize::try_from(c.allocation_size).map_err(|_| {
                Status::invalid_argument(format!(
                    "allocation_size {} is negative",
                    c.allocation_size
                ))
            })?;
            let ids = self
                .resource
                .preferred(
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    size,
                    &view,
                )
                .map_err(Status::invalid_argument)?;
            out.push(ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(PreferredAllocationResponse {
            container_responses: out,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let mut out = Vec::new();
        for c in request.into_inner().container_requests {
            let resp = self.resource.allocate(&c.devices_i_ds).map_err(|e| {
                tracing::warn!(resource = self.resource.name(), error = %e, "Allocate refused");
                Status::invalid_argument(e)
            })?;
            tracing::info!(
                resource = self.resource.name(),
                devices = ?c.devices_i_ds,
                "allocated"
            );
            out.push(resp);
        }
        Ok(Response::new(AllocateResponse {
            container_responses: out,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}
