//! Kernel interfaces by rtnetlink: the veth pair of a `kernel` attachment, a VF netdev
//! moved into a pod and back, and a PF's VF table. Work inside the
//! pod's netns runs on a dedicated thread that `setns()`es first and only then opens its own
//! netlink socket (setns changes the calling thread only; the socket stays in the namespace
//! it was created in).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkVfInfo};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::CniError;
use crate::netdev::NetdevState;

/// The pod side of a veth.
#[derive(Debug, Clone)]
pub struct PodSide {
    /// The pod's netns file.
    pub netns: PathBuf,
    /// Name the pod end is created with in the host namespace.
    pub tmp_name: String,
    /// Name it gets inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// MAC (`None` keeps the device's own).
    pub mac: Option<[u8; 6]>,
    /// MTU (`None` keeps the device's own).
    pub mtu: Option<u32>,
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
                .add(
                    LinkVeth::new(&host, &p.tmp_name)
                        .mtu(p.mtu.unwrap_or(1500))
                        .build(),
                )
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
    configure_pod_end(pod)
}

/// Inside the pod: renames `pod.tmp_name` to `pod.ifname`, sets MAC and MTU when given,
/// brings it up and adds the addresses and routes.
fn configure_pod_end(pod: &PodSide) -> Result<(), CniError> {
    let p = pod.clone();
    on_thread(Some(pod.netns.clone()), move |h| {
        Box::pin(async move {
            let idx = index_of(&h, &p.tmp_name).await?.ok_or_else(|| {
                CniError::netlink("pod interface", format!("{} is not in the pod", p.tmp_name))
            })?;
            let mut set = LinkUnspec::new_with_index(idx).name(p.ifname.clone());
            if let Some(mac) = p.mac {
                set = set.address(mac.to_vec());
            }
            if let Some(mtu) = p.mtu {
                set = set.mtu(mtu);
            }
            h.link().set(set.build()).execute().await.map_err(|e| {
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

/// The state of the host-namespace link `name` (`None` when there is none).
pub fn link_state(name: &str) -> Result<Option<NetdevState>, CniError> {
    let name = name.to_owned();
    on_thread(None, move |h| {
        Box::pin(async move { state_of(&h, &name).await })
    })
}

/// The first answer of a link request; `None` when the link does not exist.
async fn first_link<S>(
    mut links: S,
    what: impl FnOnce() -> String,
) -> Result<Option<rtnetlink::packet_route::link::LinkMessage>, CniError>
where
    S: futures_util::Stream<
            Item = Result<rtnetlink::packet_route::link::LinkMessage, rtnetlink::Error>,
        > + Unpin,
{
    match links.try_next().await {
        Ok(msg) => Ok(msg),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(CniError::netlink(what(), e)),
    }
}

async fn state_of(h: &Handle, name: &str) -> Result<Option<NetdevState>, CniError> {
    let links = h.link().get().match_name(name.to_owned()).execute();
    let Some(msg) = first_link(links, || format!("looking up {name}")).await? else {
        return Ok(None);
    };
    let mut state = NetdevState {
        name: name.to_owned(),
        mac: [0; 6],
        mtu: 1500,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => state.mac.copy_from_slice(m),
            LinkAttribute::Mtu(m) => state.mtu = *m,
            _ => {}
        }
    }
    Ok(Some(state))
}

/// Moves the host link `host_name` into the pod: down, renamed to `pod.tmp_name` (so it
/// cannot clash in either namespace), moved by netns fd, then set up as `pod.ifname` there.
pub fn move_into_pod(host_name: &str, pod: &PodSide) -> Result<(), CniError> {
    let (host, p) = (host_name.to_owned(), pod.clone());
    on_thread(None, move |h| {
        Box::pin(async move {
            let idx = index_of(&h, &host).await?.ok_or_else(|| {
                CniError::netlink("VF netdev", format!("{host} is not in the host namespace"))
            })?;
            let ns = File::open(&p.netns).map_err(|e| {
                CniError::netlink(format!("opening the pod netns {}", p.netns.display()), e)
            })?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).down().build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("setting {host} down"), e))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .name(p.tmp_name.clone())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("renaming {host} to {}", p.tmp_name), e))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("moving {host} into the pod netns"), e))?;
            Ok(())
        })
    })?;
    configure_pod_end(pod)
}

/// Moves `ifname` (or, after an interrupted DEL, `tmp_name`) out of the pod netns back to
/// the host namespace, down and named `tmp_name`; `Ok(false)` when the pod has neither.
pub fn move_to_host(netns: &Path, ifname: &str, tmp_name: &str) -> Result<bool, CniError> {
    let host_ns = File::open("/proc/self/ns/net")
        .map_err(|e| CniError::netlink("opening the host netns", e))?;
    let (ifname, tmp) = (ifname.to_owned(), tmp_name.to_owned());
    on_thread(Some(netns.to_owned()), move |h| {
        Box::pin(async move {
            let idx = match index_of(&h, &ifname).await? {
                Some(i) => i,
                None => match index_of(&h, &tmp).await? {
                    Some(i) => i,
                    None => return Ok(false),
                },
            };
            h.link()
                .set(LinkUnspec::new_with_index(idx).down().build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("setting {ifname} down in the pod"), e))?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).name(tmp.clone()).build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("renaming {ifname} to {tmp}"), e))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .setns_by_fd(host_ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("moving {ifname} back to the host"), e))?;
            Ok(true)
        })
    })
}

/// Puts the first of `names` found in the host namespace back to `orig` (name, MAC, MTU,
/// up/down); `Ok(false)` when none is there.
pub fn restore_in_host(names: &[String], orig: &NetdevState) -> Result<bool, CniError> {
    let (names, orig) = (names.to_vec(), orig.clone());
    on_thread(None, move |h| {
        Box::pin(async move {
            let mut found = None;
            for n in &names {
                if let Some(i) = index_of(&h, n).await? {
                    found = Some((i, n.clone()));
                    break;
                }
            }
            let Some((idx, now)) = found else {
                return Ok(false);
            };
            h.link()
                .set(LinkUnspec::new_with_index(idx).down().build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("setting {now} down"), e))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .name(orig.name.clone())
                        .address(orig.mac.to_vec())
                        .mtu(orig.mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| {
                    CniError::netlink(format!("restoring {now} as {} (MAC, MTU)", orig.name), e)
                })?;
            if orig.up {
                h.link()
                    .set(LinkUnspec::new_with_index(idx).up().build())
                    .execute()
                    .await
                    .map_err(|e| CniError::netlink(format!("bringing {} up", orig.name), e))?;
            }
            Ok(true)
        })
    })
}

/// The VF table of PF `pf` (`RTM_GETLINK` with `RTEXT_FILTER_VF`): `None` when there is no
/// such link, an empty list when the kernel reports no VFs on it.
pub fn vf_list(pf: &str) -> Result<Option<Vec<LinkVfInfo>>, CniError> {
    let pf = pf.to_owned();
    on_thread(None, move |h| {
        Box::pin(async move {
            let (family, mask) = vf_query();
            let links = h
                .link()
                .get()
                .match_name(pf.clone())
                .set_filter_mask(family, mask)
                .execute();
            let Some(msg) = first_link(links, || format!("reading the VFs of {pf}")).await? else {
                return Ok(None);
            };
            Ok(Some(
                msg.attributes
                    .into_iter()
                    .find_map(|a| match a {
                        LinkAttribute::VfInfoList(l) => Some(l),
                        _ => None,
                    })
                    .unwrap_or_default(),
            ))
        })
    })
}

/// Sends `info` (one VF's settings) to PF `pf` (`RTM_SETLINK` with `IFLA_VFINFO_LIST`).
pub fn set_vf(pf: &str, info: LinkVfInfo) -> Result<(), CniError> {
    let pf = pf.to_owned();
    on_thread(None, move |h| {
        Box::pin(async move {
            let idx = index_of(&h, &pf)
                .await?
                .ok_or_else(|| CniError::netlink(format!("PF {pf}"), "no such interface"))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .append_extra_attribute(vf_set_attribute(info))
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("setting VF attributes on {pf}"), e))
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

/// The attribute and family of the `RTM_GETLINK` that lists a PF's VFs.
pub fn vf_query() -> (AddressFamily, Vec<LinkExtentMask>) {
    (AddressFamily::Unspec, vec![LinkExtentMask::Vf])
}

/// The attribute of the `RTM_SETLINK` that applies `info`.
pub fn vf_set_attribute(info: LinkVfInfo) -> LinkAttribute {
    LinkAttribute::VfInfoList(vec![info])
}
