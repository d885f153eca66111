//! Sharding across replicas, with the protocol of kubernetes-controller-sharding
//! (github.com/timebertt/kubernetes-controller-sharding, `docs/design.md`). The sharder itself
//! is not part of hotconf; a replica started with `--controller-ring RING`:
//!
//! - announces itself with a shard Lease named after itself, `holderIdentity` its own name,
//!   labelled `alpha.sharding.timebertt.dev/controllerring: RING`, and writes only while it
//!   holds that Lease (no leader election: every shard writes its own objects);
//! - watches, caches and reconciles only the CRs labelled
//!   `shard.alpha.sharding.timebertt.dev/RING: <its name>`;
//! - acknowledges a move: a CR that carries `drain.alpha.sharding.timebertt.dev/RING` has both
//!   labels removed and is not reconciled again, so the sharder can hand it to another shard
//!   with no two shards writing it at once.
//!
//! The projected ConfigMaps and Secrets are watched by metadata as without sharding (they need
//! no shard label); the CRs, which hold the history, are what each shard divides.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The label of a shard Lease: the ControllerRing it belongs to.
pub const RING_LABEL: &str = "alpha.sharding.timebertt.dev/controllerring";

/// One replica's place in a ring: the ring's name and the shard's (its Lease's name and
/// `holderIdentity`, and the value of the shard label on its objects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The ControllerRing's name.
    pub ring: String,
    /// This shard's name.
    pub name: String,
}

impl Shard {
    /// A shard of `ring` named `name`; refused when either cannot be what the protocol makes of
    /// it: the ring's name is part of two label keys (at most 63 characters), the shard's is a
    /// label value and a Lease name.
    pub fn new(ring: &str, name: &str) -> Result<Shard, String> {
        if !is_label_part(ring) || ring.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "--controller-ring {ring:?}: a ControllerRing name must be at most 63 lower-case \
                 letters, digits, '-' and '.', starting and ending with a letter or digit"
            ));
        }
        if !is_label_part(name)
            || name.contains('_')
            || name.chars().any(|c| c.is_ascii_uppercase())
        {
            return Err(format!(
                "shard name {name:?} (--lease-identity, or $POD_NAME): it names the shard Lease \
                 and is the shard label's value, so at most 63 lower-case letters, digits, '-' \
                 and '.', starting and ending with a letter or digit"
            ));
        }
        Ok(Shard {
            ring: ring.to_string(),
            name: name.to_string(),
        })
    }

    /// The label whose value names the shard an object is assigned to.
    pub fn shard_label(&self) -> String {
        format!("shard.alpha.sharding.timebertt.dev/{}", self.ring)
    }

    /// The label the sharder sets to move an object away from its shard.
    pub fn drain_label(&self) -> String {
        format!("drain.alpha.sharding.timebertt.dev/{}", self.ring)
    }

    /// The label selector of this shard's objects.
    pub fn selector(&self) -> String {
        format!("{}={}", self.shard_label(), self.name)
    }

    /// The labels of this shard's Lease.
    pub fn lease_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(RING_LABEL.to_string(), self.ring.clone())])
    }

    /// Whether an object with `labels` is being moved away from this shard.
    pub fn draining(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.contains_key(&self.drain_label())
    }

    /// The JSON merge patch that acknowledges a move: the shard and the drain label removed.
    pub fn acknowledge_drain(&self) -> Value {
        json!({"metadata": {"labels": {self.shard_label(): null, self.drain_label(): null}}})
    }
}

// A label value, or the name part of a label key: at most 63 characters, alphanumerics, '-',
// '_' and '.', starting and ending with an alphanumeric.
fn is_label_part(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(ok)
        && s.chars().last().is_some_and(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_labels_are_the_protocols() {
        let shard = Shard::new("hotconf", "hotconf-7d9f-x2").unwrap();
        assert_eq!(
            shard.selector(),
            "shard.alpha.sharding.timebertt.dev/hotconf=hotconf-7d9f-x2"
        );
        assert_eq!(
            shard.drain_label(),
            "drain.alpha.sharding.timebertt.dev/hotconf"
        );
        assert_eq!(
            shard.lease_labels(),
            BTreeMap::from([(
                "alpha.sharding.timebertt.dev/controllerring".to_string(),
                "hotconf".to_string()
            )])
        );
        let mut labels = BTreeMap::from([(shard.shard_label(), shard.name.clone())]);
        assert!(!shard.draining(&labels));
        labels.insert(shard.drain_label(), "true".into());
        assert!(shard.draining(&labels));
        assert_eq!(
            shard.acknowledge_drain(),
            json!({"metadata": {"labels": {
                "shard.alpha.sharding.timebertt.dev/hotconf": null,
                "drain.alpha.sharding.timebertt.dev/hotconf": null,
            }}})
        );
    }

    #[test]
    fn names_the_protocol_cannot_carry_are_refused() {
        for ring in ["", "Hotconf", "-ring", &"r".repeat(64), "a/b"] {
            let e = Shard::new(ring, "shard-0").unwrap_err();
            assert!(e.contains("--controller-ring"), "{ring:?}: {e}");
        }
        for name in ["", "Shard", "shard_0", &"s".repeat(64), "shard-"] {
            let e = Shard::new("ring", name).unwrap_err();
            assert!(e.contains("shard name"), "{name:?}: {e}");
        }
        assert!(Shard::new(&"r".repeat(63), "a.b-c").is_ok());
    }
}
