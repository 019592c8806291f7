//! `devcycle topics apply`: makes the cluster match `topics/` — creates missing topics, raises
//! partition counts, aligns managed configs — and reports each change.
//!
//! Invariants: idempotent (a second run reports no change); never lowers a partition count
//! (Kafka cannot), reporting it instead; replication factor changes are reported, not applied.

use crate::catalog::{Catalog, TopicDecl};
use crate::kafka::client_config;
use crate::progress::Progress;
use crate::settings::Settings;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("kafka admin error: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created { topic: String, partitions: i32 },
    PartitionsRaised { topic: String, from: i32, to: i32 },
    ConfigAligned { topic: String, key: String, from: Option<String>, to: String },
    Warning { topic: String, message: String },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created { topic, partitions } => write!(f, "created {topic} ({partitions} partitions)"),
            Change::PartitionsRaised { topic, from, to } => write!(f, "raised {topic} partitions {from} -> {to}"),
            Change::ConfigAligned { topic, key, from, to } => {
                write!(f, "set {topic} {key}: {} -> {to}", from.as_deref().unwrap_or("(default)"))
            }
            Change::Warning { topic, message } => write!(f, "WARNING {topic}: {message}"),
        }
    }
}

impl Change {
    pub fn is_change(&self) -> bool {
        !matches!(self, Change::Warning { .. })
    }
}

/// Applies every topic declaration of the catalog; returns the changes made.
pub async fn apply(settings: &Settings, catalog: &Catalog) -> Result<Vec<Change>, TopicsError> {
    apply_with(settings, catalog, &mut Progress::hidden()).await
}

/// [`apply`], counting topics on `progress`.
pub async fn apply_with(
    settings: &Settings,
    catalog: &Catalog,
    progress: &mut Progress,
) -> Result<Vec<Change>, TopicsError> {
    let admin: AdminClient<DefaultClientContext> = client_config(&settings.kafka, "admin").create()?;
    let timeout = Duration::from_millis(settings.kafka.request_timeout_ms);
    let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let mut changes = Vec::new();
    progress.start(Some(catalog.topics.len() as u64));
    for decl in catalog.topics.values() {
        let name = catalog.topic_name(&decl.name);
        apply_one(&admin, &opts, timeout, &name, decl, &mut changes).await?;
        progress.inc(1);
    }
    progress.finish();
    Ok(changes)
}

async fn apply_one(
    admin: &AdminClient<DefaultClientContext>,
    opts: &AdminOptions,
    timeout: Duration,
    name: &str,
    decl: &TopicDecl,
    changes: &mut Vec<Change>,
) -> Result<(), TopicsError> {
    let existing = current_partitions(admin, name, timeout).await?;
    let wanted = decl.managed_configs();
    let topic_err = |message: String| TopicsError::Topic { topic: name.to_string(), message };
    match existing {
        None => {
            let mut nt = NewTopic::new(name, decl.partitions, TopicReplication::Fixed(decl.replication_factor));
            for (k, v) in &wanted {
                nt = nt.set(k, v);
            }
            for r in admin.create_topics([&nt], opts).await? {
                match r {
                    Ok(_) => changes.push(Change::Created { topic: name.into(), partitions: decl.partitions }),
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => return Err(topic_err(format!("create failed: {code}"))),
                }
            }
        }
        Some((partitions, replication)) => {
            if partitions < decl.partitions {
                let np = NewPartitions::new(name, decl.partitions as usize);
                let mut raised = true;
                for r in admin.create_partitions([&np], opts).await? {
                    match r {
                        Ok(_) => {}
                        // Not an increase for the broker: the metadata read above was behind a
                        // raise made just before (another run's), which it catches up with.
                        Err((_, RDKafkaErrorCode::InvalidPartitions))
                            if has_partitions(admin, name, timeout, decl.partitions).await? =>
                        {
                            raised = false
                        }
                        Err((_, code)) => return Err(topic_err(format!("raising partitions failed: {code}"))),
                    }
                }
                if raised {
                    changes.push(Change::PartitionsRaised {
                        topic: name.into(),
                        from: partitions,
                        to: decl.partitions,
                    });
                }
            } else if partitions > decl.partitions {
                changes.push(Change::Warning {
                    topic: name.into(),
                    message: format!(
                        "has {partitions} partitions, declared {}; Kafka cannot lower it",
                        decl.partitions
                    ),
                });
            }
            if replication != decl.replication_factor {
                changes.push(Change::Warning {
                    topic: name.into(),
                    message: format!(
                        "replication factor is {replication}, declared {}; reassign by hand",
                        decl.replication_factor
                    ),
                });
            }
            align_configs(admin, opts, name, &wanted, changes).await?;
        }
    }
    Ok(())
}

async fn align_configs(
    admin: &AdminClient<DefaultClientContext>,
    opts: &AdminOptions,
    name: &str,
    wanted: &BTreeMap<String, String>,
    changes: &mut Vec<Change>,
) -> Result<(), TopicsError> {
    let topic_err = |message: String| TopicsError::Topic { topic: name.to_string(), message };
    let described = admin.describe_configs([&ResourceSpecifier::Topic(name)], opts).await?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| topic_err("no config description".into()))?
        .map_err(|code| topic_err(format!("describe configs failed: {code}")))?;
    let current: BTreeMap<String, (Option<String>, bool)> =
        resource.entries.iter().map(|e| (e.name.clone(), (e.value.clone(), e.is_default))).collect();
    let mut diffs = Vec::new();
    for (k, v) in wanted {
        let now = current.get(k).and_then(|(v, _)| v.clone());
        if now.as_deref() != Some(v.as_str()) {
            diffs.push(Change::ConfigAligned { topic: name.into(), key: k.clone(), from: now, to: v.clone() });
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    // AlterConfigs replaces the topic's dynamic configs as a whole: send every non-default
    // config we do not manage as it is, plus the managed ones.
    let mut full: BTreeMap<String, String> = current
        .iter()
        .filter(|(_, (v, is_default))| !is_default && v.is_some())
        .map(|(k, (v, _))| (k.clone(), v.clone().unwrap_or_default()))
        .collect();
    full.extend(wanted.clone());
    let mut ac = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (k, v) in &full {
        ac = ac.set(k, v);
    }
    for r in admin.alter_configs([&ac], opts).await? {
        r.map_err(|(_, code)| topic_err(format!("altering configs failed: {code}")))?;
    }
    changes.extend(diffs);
    Ok(())
}

/// (partitions, replication factor) of an existing topic, or None.
/// Whether the topic's metadata shows at least `wanted` partitions within a few seconds.
async fn has_partitions(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    timeout: Duration,
    wanted: i32,
) -> Result<bool, TopicsError> {
    for _ in 0..20 {
        if current_partitions(admin, name, timeout).await?.is_some_and(|(p, _)| p >= wanted) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(false)
}

async fn current_partitions(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    timeout: Duration,
) -> Result<Option<(i32, i32)>, TopicsError> {
    let md = admin.inner().fetch_metadata(Some(name), timeout)?;
    let Some(t) = md.topics().first() else { return Ok(None) };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    let rf = t.partitions().first().map(|p| p.replicas().len() as i32).unwrap_or(0);
    Ok(Some((t.partitions().len() as i32, rf)))
}
