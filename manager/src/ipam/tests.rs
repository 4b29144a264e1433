use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::crd::{AddressRange, Subnet};

fn subnet(cidr: &str) -> Subnet {
    Subnet {
        cidr: cidr.into(),
        ranges: vec![],
        gateway: None,
        exclude: vec![],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipv4_pool_skips_network_broadcast_gateway_and_exclusions() {
    let mut s = subnet("10.0.0.0/29");
    s.gateway = Some("10.0.0.1".into());
    s.exclude = vec!["10.0.0.4/31".into(), "10.0.0.6".into()];
    let mut pool = AddressPool::new(PoolConfig::parse("spec.ipv4", &s, true).unwrap());
    assert_eq!(pool.total(), 2);
    assert_eq!(pool.allocate().unwrap(), ip("10.0.0.2"));
    assert_eq!(pool.allocate().unwrap(), ip("10.0.0.3"));
    assert!(matches!(pool.allocate(), Err(IpamError::Exhausted { .. })));
    assert_eq!(
        pool.release(ip("10.0.0.1")),
        Err(IpamError::Reserved {
            address: ip("10.0.0.1")
        })
    );
    assert!(matches!(
        pool.allocate_specific(ip("10.0.0.5")),
        Err(IpamError::Reserved { .. })
    ));
    assert!(matches!(
        pool.allocate_specific(ip("10.0.0.7")),
        Err(IpamError::NotInPool { .. })
    ));
    pool.release(ip("10.0.0.2")).unwrap();
    assert_eq!(
        pool.release(ip("10.0.0.2")),
        Err(IpamError::NotAllocated {
            address: ip("10.0.0.2")
        })
    );
    assert_eq!(pool.allocated(), 1);
}

#[test]
fn ranges_map_addresses_across_gaps() {
    let mut s = subnet("fd00::/64");
    s.ranges = vec![
        AddressRange {
            start: "fd00::10".into(),
            end: "fd00::11".into(),
        },
        AddressRange {
            start: "fd00::1:0".into(),
            end: "fd00::1:0".into(),
        },
    ];
    let mut pool = AddressPool::new(PoolConfig::parse("spec.ipv6", &s, false).unwrap());
    let got: Vec<IpAddr> = std::iter::from_fn(|| pool.allocate().ok()).collect();
    assert_eq!(got, vec![ip("fd00::10"), ip("fd00::11"), ip("fd00::1:0")]);
    assert_eq!(pool.allocated_addresses().collect::<Vec<_>>(), got);
}

#[test]
fn big_ipv6_subnet_defaults_to_a_capped_pool() {
    let pool =
        AddressPool::new(PoolConfig::parse("spec.ipv6", &subnet("fd00::/48"), false).unwrap());
    assert_eq!(pool.total(), DEFAULT_IPV6_POOL as u64);
}

#[test]
fn parse_errors_name_the_field() {
    let cases: Vec<(Subnet, bool, &str)> = vec![
        (subnet("10.0.0.0/33"), true, "spec.ipv4.cidr"),
        (subnet("10.0.0.1/24"), true, "did you mean 10.0.0.0/24"),
        (subnet("fd00::/64"), true, "not an IPv4 subnet"),
        (subnet("16.0.0.0/4"), true, "more than one pool holds"),
        (
            Subnet {
                gateway: Some("10.1.0.1".into()),
                ..subnet("10.0.0.0/24")
            },
            true,
            "spec.ipv4.gateway: 10.1.0.1 is outside the subnet",
        ),
        (
            Subnet {
                ranges: vec![AddressRange {
                    start: "10.0.0.9".into(),
                    end: "10.0.0.2".into(),
                }],
                ..subnet("10.0.0.0/24")
            },
            true,
            "spec.ipv4.ranges[0]: start 10.0.0.9 is after end",
        ),
        (
            Subnet {
                ranges: vec![
                    AddressRange {
                        start: "10.0.0.2".into(),
                        end: "10.0.0.9".into(),
                    },
                    AddressRange {
                        start: "10.0.0.9".into(),
                        end: "10.0.0.20".into(),
                    },
                ],
                ..subnet("10.0.0.0/24")
            },
            true,
            "spec.ipv4.ranges[1]: overlaps spec.ipv4.ranges[0]",
        ),
        (
            Subnet {
                exclude: vec!["x".into()],
                ..subnet("10.0.0.0/24")
            },
            true,
            "spec.ipv4.exclude[0]",
        ),
    ];
    for (s, v4, want) in cases {
        let err = PoolConfig::parse("spec.ipv4", &s, v4)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
}

fn dual_stack(mode: AllocationMode) -> NetworkIpam {
    let mut v4 = subnet("10.0.0.0/28");
    v4.gateway = Some("10.0.0.1".into());
    NetworkIpam::new(
        mode,
        Some(PoolConfig::parse("spec.ipv4", &v4, true).unwrap()),
        Some(PoolConfig::parse("spec.ipv6", &subnet("fd00::/124"), false).unwrap()),
    )
}

#[test]
fn dynamic_allocation_is_idempotent_per_owner_and_dual_stack() {
    let mut ipam = dual_stack(AllocationMode::Dynamic);
    let a = ipam.allocate("c1/net1", &[]).unwrap();
    assert_eq!(a, vec![ip("10.0.0.2"), ip("fd00::1")]);
    assert_eq!(ipam.allocate("c1/net1", &[]).unwrap(), a);
    let b = ipam.allocate("c2/net1", &[ip("10.0.0.9")]).unwrap();
    assert_eq!(b, vec![ip("10.0.0.9")]);
    assert!(matches!(
        ipam.allocate("c3/net1", &[ip("10.0.0.9")]),
        Err(IpamError::InUse { .. })
    ));
    assert_eq!(ipam.release("c1/net1"), a);
    assert!(ipam.release("c1/net1").is_empty());
    ipam.check_invariants().unwrap();
}

#[test]
fn static_and_none_modes_refuse_what_they_cannot_do() {
    let mut ipam = dual_stack(AllocationMode::Static);
    assert!(ipam
        .allocate("c1/n", &[])
        .unwrap_err()
        .to_string()
        .contains("static"));
    // All-or-nothing: the IPv6 part fails, so the IPv4 address is not kept.
    let err = ipam
        .allocate("c1/n", &[ip("10.0.0.3"), ip("fd01::1")])
        .unwrap_err();
    assert!(matches!(err, IpamError::NotInPool { .. }), "{err}");
    assert_eq!(ipam.counts_v4().unwrap().allocated, 0);
    let mut none = dual_stack(AllocationMode::None);
    assert!(none
        .allocate("c1/n", &[])
        .unwrap_err()
        .to_string()
        .contains("none"));
}

#[test]
fn leaks_are_collected_from_live_owners() {
    let mut ipam = dual_stack(AllocationMode::Dynamic);
    for i in 0..5 {
        ipam.allocate(&format!("c{i}/n"), &[]).unwrap();
    }
    let dead = ipam.collect_leaks(|o| o.starts_with("c1") || o.starts_with("c3"));
    assert_eq!(dead, vec!["c0/n", "c2/n", "c4/n"]);
    assert_eq!(ipam.counts_v4().unwrap().allocated, 2);
    ipam.check_invariants().unwrap();
}

#[test]
fn eight_million_addresses_fit_in_about_a_mebibyte() {
    let mut ipam = NetworkIpam::new(
        AllocationMode::Dynamic,
        Some(PoolConfig::parse("spec.ipv4", &subnet("10.0.0.0/9"), true).unwrap()),
        None,
    );
    assert_eq!(ipam.counts_v4().unwrap().total, (1 << 23) - 2);
    assert!(
        ipam.pool_heap_bytes() < 1_100_000,
        "{}",
        ipam.pool_heap_bytes()
    );
    for i in 0..1000 {
        ipam.allocate(&format!("o{i}"), &[]).unwrap();
    }
    assert_eq!(ipam.counts_v4().unwrap().allocated, 1000);
}

#[derive(Debug, Clone)]
enum Op {
    Allocate(u8),
    AllocateStatic(u8, u8),
    Release(u8),
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(|o| Op::Allocate(o % 40)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(o, a)| Op::AllocateStatic(o % 40, a % 20)),
        3 => any::<u8>().prop_map(|o| Op::Release(o % 40)),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    /// Random allocate / release / "crash" (rebuild from the persisted leases) sequences on a
    /// small pool: never a duplicate, never a leak, the model agrees with the allocator, and
    /// `Exhausted` only when the subnet it names is full.
    #[test]
    fn no_duplicates_no_leaks(ops in proptest::collection::vec(op(), 1..200)) {
        let mut ipam = dual_stack(AllocationMode::Dynamic);
        let mut model: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Allocate(o) => {
                    let owner = format!("o{o}");
                    match ipam.allocate(&owner, &[]) {
                        Ok(a) => {
                            if let Some(held) = model.get(&owner) {
                                prop_assert_eq!(held, &a);
                            }
                            model.insert(owner, a);
                        }
                        Err(IpamError::Exhausted { cidr }) => {
                            // Refused only when the subnet it names really has no free address.
                            prop_assert!(!model.contains_key(&owner));
                            let counts = if cidr.contains(':') { ipam.counts_v6() } else { ipam.counts_v4() };
                            prop_assert_eq!(counts.map(|c| c.free), Some(0), "Exhausted with a free address in {}", cidr);
                        }
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                }
                Op::AllocateStatic(o, a) => {
                    let owner = format!("o{o}");
                    let addr: IpAddr = format!("10.0.0.{}", a % 16).parse().unwrap();
                    let in_use = model.values().flatten().any(|x| *x == addr);
                    match ipam.allocate(&owner, &[addr]) {
                        Ok(got) => {
                            prop_assert!(!in_use || model.get(&owner).is_some_and(|h| h.contains(&addr)));
                            model.insert(owner, got);
                        }
                        Err(e) => prop_assert!(
                            in_use
                                || model.contains_key(&owner)
                                || matches!(e, IpamError::Reserved { .. } | IpamError::NotInPool { .. }),
                            "refused a free address: {}", e
                        ),
                    }
                }
                Op::Release(o) => {
                    let owner = format!("o{o}");
                    let freed = ipam.release(&owner);
                    prop_assert_eq!(freed, model.remove(&owner).unwrap_or_default());
                }
                Op::Crash => {
                    let mut fresh = dual_stack(AllocationMode::Dynamic);
                    fresh.restore(ipam.leases()).unwrap();
                    ipam = fresh;
                }
            }
            prop_assert_eq!(ipam.leases(), &model);
            if let Err(e) = ipam.check_invariants() {
                prop_assert!(false, "{}", e);
            }
        }
    }
}
