//! `devcycle status` and `devcycle lag`: the cluster as DevCycle sees it — brokers, topics
//! against their declarations, consumer groups with members and lag, dead-letter depth, and the
//! health of each service.
//!
//! Everything here is read-only and bounded by `kafka.request_timeout_ms`.

use crate::app::Deps;
use crate::kafka::client_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::fmt::Write as _;
use std::time::Duration;

/// Lag of one partition of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// Next offset the group will read (None: nothing committed yet; reads from the start).
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
}

impl PartitionLag {
    pub fn lag(&self) -> i64 {
        (self.high - self.committed.unwrap_or(self.low).max(self.low)).max(0)
    }
}

fn reader(deps: &Deps, group: &str) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    client_config(&deps.settings.kafka, "ops").set("group.id", group).set("enable.auto.commit", "false").create()
}

fn partitions(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    let md = c.fetch_metadata(Some(topic), timeout)?;
    Ok(md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default())
}

/// The lag of `group` on `topic`, per partition.
pub fn group_lag(deps: &Deps, group: &str, topic: &str) -> Result<Vec<PartitionLag>, rdkafka::error::KafkaError> {
    let timeout = Duration::from_millis(deps.settings.kafka.request_timeout_ms);
    let c = reader(deps, group)?;
    let parts = partitions(&c, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition(topic, *p);
    }
    let committed = c.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, timeout)?;
        let committed = committed.find_partition(topic, p).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        out.push(PartitionLag { partition: p, committed, low, high });
    }
    Ok(out)
}

/// A printable lag table for every processor (or one group).
pub fn lag_report(deps: &Deps, only_group: Option<&str>) -> Result<String, rdkafka::error::KafkaError> {
    let mut s = String::new();
    for spec in deps.catalog.processors.values() {
        let group = deps.catalog.group_name(&spec.group);
        if only_group.is_some_and(|g| g != group && g != spec.group) {
            continue;
        }
        let topic = deps.catalog.topic_name(&spec.input);
        let lags = group_lag(deps, &group, &topic)?;
        let total: i64 = lags.iter().map(PartitionLag::lag).sum();
        let _ = writeln!(s, "group {group} on {topic}: total lag {total}");
        let _ = writeln!(s, "  {:>9} {:>12} {:>12} {:>8}", "partition", "committed", "end", "lag");
        for l in lags {
            let committed = l.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(s, "  {:>9} {:>12} {:>12} {:>8}", l.partition, committed, l.high, l.lag());
        }
    }
    Ok(s)
}

/// The full status report.
pub async fn status_report(deps: &Deps) -> String {
    let mut s = String::new();
    let registry = crate::registry::RegistryClient::new(&deps.settings);
    let (pg, redis, reg) = tokio::join!(crate::db::ping(&deps.pool), deps.cache.ping(), registry.reachable());
    let word = |b: bool| if b { "ok" } else { "UNAVAILABLE" };
    let _ = writeln!(s, "services: postgres {} | redis {} | schema registry {}", word(pg), word(redis), word(reg));
    let kafka = tokio::task::block_in_place(|| kafka_status(deps));
    match kafka {
        Ok(k) => s.push_str(&k),
        Err(e) => {
            let _ = writeln!(s, "kafka: UNAVAILABLE ({e})");
        }
    }
    s
}

fn kafka_status(deps: &Deps) -> Result<String, rdkafka::error::KafkaError> {
    let timeout = Duration::from_millis(deps.settings.kafka.request_timeout_ms);
    let c = reader(deps, &format!("{}devcycle.ops", deps.settings.kafka.namespace))?;
    let md = c.fetch_metadata(None, timeout)?;
    let mut s = String::new();
    let brokers: Vec<String> = md.brokers().iter().map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port())).collect();
    let _ = writeln!(s, "kafka: ok, brokers {}", brokers.join(", "));
    let _ = writeln!(s, "topics:");
    for decl in deps.catalog.topics.values() {
        let name = deps.catalog.topic_name(&decl.name);
        let actual = md.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len());
        let state = match actual {
            None => "MISSING (run `devcycle topics apply`)".to_string(),
            Some(n) if n as i32 == decl.partitions => format!("{n} partitions, as declared"),
            Some(n) => format!("{n} partitions, declared {} (run `devcycle topics apply`)", decl.partitions),
        };
        let _ = writeln!(s, "  {name}: {state}");
    }
    let _ = writeln!(s, "consumer groups:");
    for spec in deps.catalog.processors.values() {
        let group = deps.catalog.group_name(&spec.group);
        let topic = deps.catalog.topic_name(&spec.input);
        let groups = c.fetch_group_list(Some(&group), timeout)?;
        let (state, members) = groups
            .groups()
            .first()
            .map(|g| (g.state().to_string(), g.members().iter().map(|m| m.client_id().to_string()).collect::<Vec<_>>()))
            .unwrap_or_else(|| ("unknown".into(), vec![]));
        let lag: i64 = group_lag(deps, &group, &topic)?.iter().map(PartitionLag::lag).sum();
        let _ = writeln!(
            s,
            "  {group} ({}): state {state}, {} member(s) {:?}, lag {lag}",
            spec.name,
            members.len(),
            members
        );
    }
    let dlq = deps.catalog.topic_name("devcycle.dead-letters");
    let mut depth = 0;
    for p in partitions(&c, &dlq, timeout)? {
        let (low, high) = c.fetch_watermarks(&dlq, p, timeout)?;
        depth += high - low;
    }
    // Offsets: an exactly-once processor's transaction markers count too (`dlq list` reads the
    // letters themselves).
    let _ = writeln!(s, "dead letters: {depth} in {dlq} (offsets, transaction markers included; `devcycle dlq list`)");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::PartitionLag;

    #[test]
    fn lag_counts_from_the_committed_offset_or_the_start() {
        let l = |committed, low, high| PartitionLag { partition: 0, committed, low, high }.lag();
        assert_eq!(l(Some(5), 0, 12), 7);
        assert_eq!(l(None, 3, 12), 9);
        assert_eq!(l(Some(1), 4, 12), 8); // committed below retention: from the low watermark
        assert_eq!(l(Some(12), 0, 12), 0);
    }
}
