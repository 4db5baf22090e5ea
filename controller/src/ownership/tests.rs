//! Unit tests of the ownership record.

use super::*;
use palisade_providers::model::{TAG_INSTALLATION, TAG_MANAGED_BY, TAG_TARGET, ownership_tags};
use palisade_providers::{SecurityGroup, Tags};

fn group(id: &str, tags: Tags) -> SecurityGroup {
    SecurityGroup {
        id: id.into(),
        name: format!("n-{id}"),
        network: "vpc-1".into(),
        tags,
        rules: Vec::new(),
        default_rules: Vec::new(),
        attached: None,
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("h.db")).unwrap();
    (dir, s)
}

#[test]
fn a_pinned_installation_is_kept_and_a_different_one_refused() {
    let (_d, s) = store();
    s.pin_installation("prod-eu").unwrap();
    assert_eq!(s.installation().unwrap(), "prod-eu");
    s.pin_installation("prod-eu").unwrap();
    let err = s.pin_installation("other").unwrap_err().to_string();
    assert!(err.contains("prod-eu") && err.contains("other"), "{err}");
}

#[test]
fn installation_is_generated_once() {
    let (_d, s) = store();
    let a = s.installation().unwrap();
    assert_eq!(a.len(), 32);
    assert_eq!(s.installation().unwrap(), a);
}

#[test]
fn bootstrap_adopts_once_then_claims_are_refused() {
    let (_d, s) = store();
    let own = s.ownership("t").unwrap();
    assert!(own.adopt_tagged);
    let mut inv = Inventory {
        target: "t".into(),
        groups: vec![group("sg-legacy", ownership_tags("api"))],
        ..Inventory::default()
    };
    own.vet_inventory(&mut inv);
    let u = observed(&own, &inv);
    assert!(u.bootstrapped);
    assert_eq!(u.add.len(), 1);
    s.update_ownership("t", None, 1, &u).unwrap();
    let events = s.recent(10).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.event.kind() == crate::history::kind::OWNERSHIP_BOOTSTRAPPED)
    );

    let own = s.ownership("t").unwrap();
    assert!(!own.adopt_tagged);
    assert_eq!(own.owner_of(OwnedKind::Group, "SG-LEGACY"), Some("api"));
    // A group tagged afterwards is a claim, not an adoption.
    let mut inv = Inventory {
        target: "t".into(),
        groups: vec![
            group("sg-legacy", ownership_tags("api")),
            group("sg-spoof", ownership_tags("api")),
        ],
        ..Inventory::default()
    };
    own.vet_inventory(&mut inv);
    assert_eq!(inv.groups[1].owner(), None);
    assert!(
        inv.ownership
            .iter()
            .any(|n| n.id == "sg-spoof" && n.verdict == OwnershipVerdict::Claimed)
    );
    // The legacy group gets its stamp: its tags are to be completed.
    assert!(
        inv.ownership
            .iter()
            .any(|n| n.id == "sg-legacy" && n.verdict == OwnershipVerdict::TagsChanged)
    );
    assert!(observed(&own, &inv).add.is_empty());
}

#[test]
fn a_pending_creation_is_recovered_only_with_our_stamp() {
    let (_d, s) = store();
    s.update_ownership(
        "t",
        None,
        1,
        &RecordUpdate {
            bootstrapped: true,
            ..Default::default()
        },
    )
    .unwrap();
    s.update_ownership(
        "t",
        None,
        2,
        &RecordUpdate {
            pending: vec![(OwnedKind::Group, "api".into())],
            ..Default::default()
        },
    )
    .unwrap();
    let own = s.ownership("t").unwrap();
    let mut ours = ownership_tags("api");
    ours.insert(TAG_TARGET.into(), "t".into());
    ours.insert(TAG_INSTALLATION.into(), s.installation().unwrap());
    let mut inv = Inventory {
        target: "t".into(),
        groups: vec![group("sg-1", ownership_tags("api")), group("sg-2", ours)],
        ..Inventory::default()
    };
    own.vet_inventory(&mut inv);
    let u = observed(&own, &inv);
    assert_eq!(u.add.len(), 1, "{u:?}");
    assert_eq!(u.add[0].id, "sg-2");
    assert_eq!(u.add[0].how, How::Recovered);
    s.update_ownership("t", None, 3, &u).unwrap();
    let own = s.ownership("t").unwrap();
    assert_eq!(own.owner_of(OwnedKind::Group, "sg-2"), Some("api"));
    assert_eq!(own.owner_of(OwnedKind::Group, "sg-1"), None);
}

#[test]
fn stripped_tags_are_recognised_by_id_and_vanished_ids_leave() {
    let mut own = Ownership::recorded("t", "inst");
    own.insert(OwnedKind::Group, "sg-1", "api");
    own.insert(OwnedKind::Group, "sg-gone", "db");
    let mut stripped = ownership_tags("api");
    stripped.remove(TAG_MANAGED_BY);
    let mut inv = Inventory {
        target: "t".into(),
        groups: vec![group("sg-1", stripped)],
        ..Inventory::default()
    };
    own.vet_inventory(&mut inv);
    assert_eq!(inv.groups[0].owner(), Some("api"));
    assert_eq!(inv.ownership[0].verdict, OwnershipVerdict::TagsChanged);
    let u = observed(&own, &inv);
    assert_eq!(
        u.remove,
        vec![(
            OwnedKind::Group,
            "sg-gone".into(),
            "db".into(),
            Removed::Vanished
        )]
    );
}

#[test]
fn another_targets_or_installations_resources_are_foreign() {
    let own = Ownership::recorded("t", "inst");
    let mut other = ownership_tags("api");
    other.insert(TAG_TARGET.into(), "other".into());
    let mut tags = other.clone();
    let n = own.vet(OwnedKind::Group, "sg-9", &mut tags).unwrap();
    assert_eq!(n.verdict, OwnershipVerdict::Foreign);
    assert_eq!(palisade_providers::model::owner_of(&tags), None);
    // Even during the bootstrap.
    let mut boot = Ownership::recorded("t", "inst");
    boot.adopt_tagged = true;
    let mut tags = other;
    assert_eq!(
        boot.vet(OwnedKind::Group, "sg-9", &mut tags)
            .unwrap()
            .verdict,
        OwnershipVerdict::Foreign
    );
}
