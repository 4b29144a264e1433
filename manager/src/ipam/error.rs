//! The IPAM error type, below the allocators that return it.

use std::net::IpAddr;

/// Why an address could not be parsed, allocated or released.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IpamError {
    /// A CIDR does not parse.
    #[error("{field}: {value:?} is not a CIDR; write it like 10.10.0.0/16 or fd00:10::/64")]
    BadCidr {
        /// Field path.
        field: String,
        /// Value given.
        value: String,
    },
    /// A CIDR has host bits set.
    #[error("{field}: {value:?} has host bits set; did you mean {network}?")]
    HostBitsSet {
        /// Field path.
        field: String,
        /// Value given.
        value: String,
        /// The network address.
        network: String,
    },
    /// A subnet of the wrong family.
    #[error("{field}: {value:?} is not an {family} subnet; put it under the other family's field")]
    WrongFamily {
        /// Field path.
        field: String,
        /// Value given.
        value: String,
        /// Expected family.
        family: &'static str,
    },
    /// An address does not parse or has the wrong family.
    #[error("{field}: {value:?} is not an {family} address")]
    BadAddress {
        /// Field path.
        field: String,
        /// Value given.
        value: String,
        /// Expected family.
        family: &'static str,
    },
    /// An address outside the subnet.
    #[error("{field}: {value} is outside the subnet {cidr}; use an address inside it")]
    OutsideSubnet {
        /// Field path.
        field: String,
        /// Value given.
        value: String,
        /// The subnet.
        cidr: String,
    },
    /// `start` after `end`.
    #[error("{field}: start {start} is after end {end}; swap them")]
    BackwardsRange {
        /// Field path.
        field: String,
        /// Start given.
        start: String,
        /// End given.
        end: String,
    },
    /// Two ranges overlap.
    #[error("{field}: overlaps {other}; make the ranges disjoint")]
    RangesOverlap {
        /// Field path.
        field: String,
        /// The other range's path.
        other: String,
    },
    /// Too many addresses for one pool.
    #[error(
        "{field}: {addresses} addresses is more than one pool holds ({max}); give smaller ranges"
    )]
    PoolTooLarge {
        /// Field path.
        field: String,
        /// Addresses the ranges hold.
        addresses: u128,
        /// The limit.
        max: u128,
    },
    /// No free address left.
    #[error("subnet {cidr} has no free address left; widen its ranges or release addresses")]
    Exhausted {
        /// The subnet.
        cidr: String,
    },
    /// A requested address is not in any range.
    #[error("address {address} is not in the allocatable ranges of {cidr}")]
    NotInPool {
        /// The address.
        address: IpAddr,
        /// The subnet.
        cidr: String,
    },
    /// The gateway or an excluded address.
    #[error("address {address} is the gateway or excluded; request another one")]
    Reserved {
        /// The address.
        address: IpAddr,
    },
    /// Already given to someone else.
    #[error("address {address} is already in use; request another one or release it first")]
    InUse {
        /// The address.
        address: IpAddr,
    },
    /// Released but not allocated.
    #[error("address {address} is not allocated")]
    NotAllocated {
        /// The address.
        address: IpAddr,
    },
    /// A request that does not fit the network's allocation mode.
    #[error("{0}")]
    Mode(String),
    /// A stored lease that cannot be restored.
    #[error("lease of {owner}: {source}")]
    Restore {
        /// Lease owner.
        owner: String,
        /// Why.
        source: Box<IpamError>,
    },
}
