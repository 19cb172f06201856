//! What durable state was derived from: the source's identity, recorded in checkpoints and in the
//! archive and compared at every start, so that state of another source is refused instead of
//! silently applied to this one (offsets and positions of another source mean nothing here).
//!
//! Contract: an identity is a set of facts `key=value`, written `k=v; k=v` in key order. Keys:
//! `kafka.cluster` (the cluster id), `kafka.topic.<topic>` (the topic id: a topic deleted and
//! created again under its name has a new one), `postgres.system` (the cluster's system
//! identifier), `postgres.database`, `postgres.slot` (what the CDC reads, from its heartbeats).
//! Two identities conflict when a key both have has different values; a key only one has (a
//! topic first seen later, a source whose CDC has not announced itself yet) is no conflict.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceIdentity(BTreeMap<String, String>);

/// Kafka record header of the CDC's heartbeats: the PostgreSQL facts of the source it reads.
pub const HEARTBEAT_SOURCE_HEADER: &str = "rainbow.source";

impl SourceIdentity {
    pub fn new() -> SourceIdentity {
        SourceIdentity::default()
    }

    /// Reads the text form; the older form `Kafka cluster <id>` is the cluster fact.
    pub fn parse(text: &str) -> SourceIdentity {
        let mut facts = BTreeMap::new();
        if let Some(id) = text.strip_prefix("Kafka cluster ") {
            facts.insert("kafka.cluster".to_string(), id.trim().to_string());
            return SourceIdentity(facts);
        }
        for part in text.split(';') {
            if let Some((k, v)) = part.split_once('=') {
                facts.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        SourceIdentity(facts)
    }

    /// The PostgreSQL facts of the CDC reading `database` through `slot` of the cluster `system`.
    pub fn postgres(system: &str, database: &str, slot: &str) -> SourceIdentity {
        let mut id = SourceIdentity::new();
        id.insert("postgres.system", system);
        id.insert("postgres.database", database);
        id.insert("postgres.slot", slot);
        id
    }

    pub fn insert(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_string(), value.to_string());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn facts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Adds the facts of `other` this one lacks.
    pub fn merge(&mut self, other: &SourceIdentity) {
        for (k, v) in &other.0 {
            self.0.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// The facts both have with different values: `key: <this> here, <now> now`.
    pub fn conflicts(&self, now: &SourceIdentity) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|(k, v)| match now.0.get(k) {
                Some(w) if w != v => Some(format!("{k}: {v} recorded, {w} now")),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for SourceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip_and_only_different_values_conflict() {
        let mut a = SourceIdentity::new();
        a.insert("kafka.cluster", "C1");
        a.insert("kafka.topic.t", "T1");
        let text = a.to_string();
        assert_eq!(text, "kafka.cluster=C1; kafka.topic.t=T1");
        assert_eq!(SourceIdentity::parse(&text), a);
        assert_eq!(SourceIdentity::parse("Kafka cluster C1").get("kafka.cluster"), Some("C1"));

        let mut b = SourceIdentity::parse("kafka.cluster=C1; kafka.topic.u=U1");
        b.merge(&SourceIdentity::postgres("7", "db", "slot"));
        assert!(a.conflicts(&b).is_empty(), "topics only one names and new facts are no conflict");
        b.insert("kafka.topic.t", "T2");
        assert_eq!(a.conflicts(&b), ["kafka.topic.t: T1 recorded, T2 now"]);
        a.merge(&b);
        assert_eq!(a.get("kafka.topic.t"), Some("T1"), "merge keeps what was recorded");
        assert_eq!(a.get("postgres.slot"), Some("slot"));
    }
}
