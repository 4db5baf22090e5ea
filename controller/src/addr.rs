//! Typed resource addresses, like Terraform's: what a planned change, a finding, a
//! change record or a history event is about.
//!
//! An address is a kind, a name (the policy that owns a group or endpoint, a function's
//! or subnet's name) and, once the cloud has one, its id. Its [`key`](ResourceAddr::key)
//! (kind and name, without the id) identifies the resource across reconciles and is the
//! history's resource column; its display form (`group payments-api (sg-1)`) is what
//! people read and what JSON carries, so reports written by earlier versions read back
//! the same.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What kind of thing an address names. Ordered like their names, so that sorted
/// addresses read like sorted text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// A managed (or observed) VPC endpoint / private endpoint, named by its owner key.
    Endpoint,
    /// A function (Lambda, function app), named by its name.
    Function,
    /// A security group / NSG, named by its owner key (managed) or its id (observed).
    Group,
    /// A policy document, named by its name.
    Policy,
    /// A place in the policy source (`file:line`), when only that is known.
    Source,
    /// An Azure subnet, named by its name.
    Subnet,
    /// A whole target.
    Target,
}

impl ResourceKind {
    /// The word used in addresses.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Endpoint => "endpoint",
            ResourceKind::Function => "function",
            ResourceKind::Group => "group",
            ResourceKind::Policy => "policy",
            ResourceKind::Source => "source",
            ResourceKind::Subnet => "subnet",
            ResourceKind::Target => "target",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<palisade_providers::OwnedKind> for ResourceKind {
    fn from(k: palisade_providers::OwnedKind) -> Self {
        match k {
            palisade_providers::OwnedKind::Group => ResourceKind::Group,
            palisade_providers::OwnedKind::Endpoint => ResourceKind::Endpoint,
        }
    }
}

/// A resource address: kind, name and, when known, the cloud id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceAddr {
    /// Kind.
    pub kind: ResourceKind,
    /// Name (see [`ResourceKind`]).
    pub name: String,
    /// The cloud's id, once there is one.
    pub id: Option<String>,
}

impl ResourceAddr {
    /// `kind name`.
    pub fn new(kind: ResourceKind, name: impl Into<String>) -> ResourceAddr {
        ResourceAddr {
            kind,
            name: name.into(),
            id: None,
        }
    }

    /// A group, by owner key (or id, for one Palisade does not manage).
    pub fn group(name: impl Into<String>) -> ResourceAddr {
        ResourceAddr::new(ResourceKind::Group, name)
    }

    /// A function, by name.
    pub fn function(name: impl Into<String>) -> ResourceAddr {
        ResourceAddr::new(ResourceKind::Function, name)
    }

    /// An endpoint, by owner key.
    pub fn endpoint(name: impl Into<String>) -> ResourceAddr {
        ResourceAddr::new(ResourceKind::Endpoint, name)
    }

    /// A subnet, by name.
    pub fn subnet(name: impl Into<String>) -> ResourceAddr {
        ResourceAddr::new(ResourceKind::Subnet, name)
    }

    /// A policy, by name.
    pub fn policy(name: impl Into<String>) -> ResourceAddr {
        ResourceAddr::new(ResourceKind::Policy, name)
    }

    /// The same address with the cloud's id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> ResourceAddr {
        self.id = Some(id.into());
        self
    }

    /// The same address without the id: what identifies it across reconciles.
    #[must_use]
    pub fn without_id(&self) -> ResourceAddr {
        ResourceAddr {
            kind: self.kind,
            name: self.name.clone(),
            id: None,
        }
    }

    /// `kind name`: the history's resource key.
    pub fn key(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

impl fmt::Display for ResourceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        Ok(())
    }
}

/// A string that is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a resource address; expected `<kind> <name>` or `<kind> <name> (<id>)` with kind one of endpoint, function, group, policy, source, subnet, target"
)]
pub struct AddrError(String);

impl FromStr for ResourceAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrError(s.to_string());
        let (kind, rest) = s.split_once(' ').ok_or_else(bad)?;
        let kind = match kind {
            "endpoint" => ResourceKind::Endpoint,
            "function" => ResourceKind::Function,
            "group" => ResourceKind::Group,
            "policy" => ResourceKind::Policy,
            "source" => ResourceKind::Source,
            "subnet" => ResourceKind::Subnet,
            "target" => ResourceKind::Target,
            _ => return Err(bad()),
        };
        let (name, id) = match rest.strip_suffix(')').and_then(|r| r.rsplit_once(" (")) {
            Some((name, id)) => (name, Some(id.to_string())),
            None => (rest, None),
        };
        if name.is_empty() || id.as_deref() == Some("") {
            return Err(bad());
        }
        Ok(ResourceAddr {
            kind,
            name: name.to_string(),
            id,
        })
    }
}

impl Serialize for ResourceAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ResourceAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for a in [
            ResourceAddr::group("payments-api").with_id("sg-1"),
            ResourceAddr::function("pay-1"),
            ResourceAddr::new(ResourceKind::Source, "policies/a.yaml:3"),
            ResourceAddr::subnet("snet a"),
        ] {
            let text = a.to_string();
            assert_eq!(text.parse::<ResourceAddr>().unwrap(), a, "{text}");
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<ResourceAddr>(&json).unwrap(), a);
        }
        assert_eq!(
            ResourceAddr::group("payments-api")
                .with_id("sg-1")
                .to_string(),
            "group payments-api (sg-1)"
        );
        assert_eq!(
            ResourceAddr::group("payments-api").with_id("sg-1").key(),
            "group payments-api"
        );
    }

    #[test]
    fn what_is_not_an_address_is_refused() {
        for s in ["", "group", "group ", "bucket x", "group x ()"] {
            assert!(s.parse::<ResourceAddr>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn sorted_addresses_read_like_sorted_text() {
        let mut v = [
            ResourceAddr::subnet("a"),
            ResourceAddr::group("b").with_id("sg-2"),
            ResourceAddr::group("b"),
            ResourceAddr::endpoint("z"),
            ResourceAddr::function("f"),
        ];
        v.sort();
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        let mut sorted = text.clone();
        sorted.sort();
        assert_eq!(text, sorted);
    }
}
