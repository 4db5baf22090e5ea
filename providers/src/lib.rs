//! Palisade's cloud-neutral model and the [`Provider`] seam.
//!
//! The engine (crate `palisade`) plans against [`model::Inventory`] values and hands
//! [`Change`]s to a [`Provider`]. Cloud implementations live behind cargo features so
//! that the engine builds and tests without any cloud SDK; the in-memory
//! [`fake::FakeProvider`] (feature `test-util`) is for tests and benchmarks only.

pub mod events;
pub mod model;
mod provider;

#[cfg(feature = "test-util")]
pub mod fake;

pub use model::{
    Access, Actor, ActorKind, AttributionQuery, Cloud, Declared, Direction, Endpoint, EndpointKind,
    Function, GroupRef, GroupReference, IcmpType, Inbound, InboundPeer, InboundRule, Inventory,
    Narrowing, Network, OwnedKind, Ownership, OwnershipBasis, OwnershipNote, OwnershipVerdict,
    Peer, Placement, PortRange, Ports, PrefixList, Protocol, Rule, SecurityGroup, Subnet, Tags,
    Target, TargetScope,
};
pub use provider::{
    ApiCallCount, CallCounter, CallKind, CallOutcome, Change, InboundRead, Outcome, OutcomeStatus,
    OwnRequests, Provider, ProviderError, RefusalKind, total_calls,
};

#[cfg(any(feature = "aws", feature = "azure"))]
pub mod rate;

#[cfg(feature = "aws")]
pub mod aws;

#[cfg(feature = "azure")]
pub mod azure;
