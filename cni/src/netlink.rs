//! Kernel interfaces by rtnetlink: the veth pair of a `kernel` attachment. Work inside the
//! pod's netns runs on a dedicated thread that `setns()`es first and only then opens its own
//! netlink socket (setns changes the calling thread only; the socket stays in the namespace
//! it was created in).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::CniError;

/// The pod side of a veth.
#[derive(Debug, Clone)]
pub struct PodSide {
    /// The pod's netns file.
    pub netns: PathBuf,
    /// Name the pod end is created with in the host namespace.
    pub tmp_name: String,
    /// Name it gets inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// MAC.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// `addr/prefix` to add.
    pub addresses: Vec<(IpAddr, u8)>,
    /// `(dst, prefix, gateway)` routes to add.
    pub routes: Vec<(IpAddr, u8, Option<IpAddr>)>,
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::netlink("starting the netlink runtime", e))
}

/// Runs `f` with a fresh rtnetlink handle on a new thread, inside `netns` when given.
fn on_thread<T: Send + 'static>(
    netns: Option<PathBuf>,
    f: impl FnOnce(Handle) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CniError>>>>
        + Send
        + 'static,
) -> Result<T, CniError> {
    std::thread::spawn(move || -> Result<T, CniError> {
        if let Some(ns) = &netns {
            let file = File::open(ns).map_err(|e| {
                CniError::netlink(format!("opening the pod netns {}", ns.display()), e)
            })?;
            // SAFETY: `file` is an open namespace descriptor kept open across the call, and
            // CLONE_NEWNET only moves this dedicated thread, which ends with this closure.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(CniError::netlink(
                    format!("entering the pod netns {}", ns.display()),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        let rt = runtime()?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| CniError::netlink("opening a netlink socket", e))?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .map_err(|_| CniError::netlink("netlink thread", "panicked"))?
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, CniError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(CniError::netlink(format!("looking up {name}"), e)),
    }
}

/// Does `name` exist in the host namespace?
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes the host-namespace link `name` (its veth peer goes with it); `Ok(false)` when
/// there was none.
pub fn delete_link(name: &str) -> Result<bool, CniError> {
    let name = name.to_owned();
    on_thread(None, move |h| {
        Box::pin(async move {
            let Some(idx) = index_of(&h, &name).await? else {
                return Ok(false);
            };
            match h.link().del(idx).execute().await {
                Ok(()) => Ok(true),
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
                {
                    Ok(false)
                }
                Err(e) => Err(CniError::netlink(format!("deleting {name}"), e)),
            }
        })
    })
}

/// Creates `host` <-> `pod.tmp_name`, brings `host` up, moves the other end into the pod and
/// sets it up there (name, MAC, MTU, addresses, routes). On error the caller deletes `host`.
pub fn create_veth(host: &str, pod: &PodSide) -> Result<(), CniError> {
    let (host, p) = (host.to_owned(), pod.clone());
    let ns_path = pod.netns.clone();
    on_thread(None, move |h| {
        Box::pin(async move {
            if index_of(&h, &host).await?.is_some() {
                // Left by an ADD that died part-way: start again.
                if let Some(i) = index_of(&h, &host).await? {
                    let _ = h.link().del(i).execute().await;
                }
            }
            h.link()
                .add(LinkVeth::new(&host, &p.tmp_name).mtu(p.mtu).build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("creating veth {host}"), e))?;
            let host_idx = index_of(&h, &host)
                .await?
                .ok_or_else(|| CniError::netlink("veth", format!("{host} vanished")))?;
            let peer_idx = index_of(&h, &p.tmp_name)
                .await?
                .ok_or_else(|| CniError::netlink("veth", format!("{} vanished", p.tmp_name)))?;
            let ns = File::open(&ns_path).map_err(|e| {
                CniError::netlink(format!("opening the pod netns {}", ns_path.display()), e)
            })?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer_idx)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| CniError::netlink("moving the veth end into the pod netns", e))?;
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
            h.link()
                .set(LinkUnspec::new_with_index(host_idx).up().build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("bringing {host} up"), e))?;
            Ok(())
        })
    })?;
    let p = pod.clone();
    on_thread(Some(pod.netns.clone()), move |h| {
        Box::pin(async move {
            let idx = index_of(&h, &p.tmp_name).await?.ok_or_else(|| {
                CniError::netlink("pod interface", format!("{} is not in the pod", p.tmp_name))
            })?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .name(p.ifname.clone())
                        .address(p.mac.to_vec())
                        .mtu(p.mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| {
                    CniError::netlink(format!("naming the pod interface {}", p.ifname), e)
                })?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("bringing {} up", p.ifname), e))?;
            for (addr, prefix) in &p.addresses {
                h.address()
                    .add(idx, *addr, *prefix)
                    .execute()
                    .await
                    .map_err(|e| CniError::netlink(format!("adding {addr}/{prefix}"), e))?;
            }
            for (dst, len, gw) in &p.routes {
                let mut b = RouteMessageBuilder::<IpAddr>::new()
                    .destination_prefix(*dst, *len)
                    .map_err(|e| CniError::netlink("route", e))?
                    .output_interface(idx);
                if let Some(gw) = gw {
                    b = b.gateway(*gw).map_err(|e| CniError::netlink("route", e))?;
                }
                h.route()
                    .add(b.build())
                    .execute()
                    .await
                    .map_err(|e| CniError::netlink(format!("adding route {dst}/{len}"), e))?;
            }
            Ok(())
        })
    })
}

/// Is `ifname` present inside the pod netns?
pub fn pod_link_exists(netns: &Path, ifname: &str) -> Result<bool, CniError> {
    let name = ifname.to_owned();
    on_thread(Some(netns.to_owned()), move |h| {
        Box::pin(async move { Ok(index_of(&h, &name).await?.is_some()) })
    })
}
