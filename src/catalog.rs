//! The declarations kept as code: topics (`topics/*.toml`), Avro schemas (`schemas/*.avsc`)
//! and processors (`processors/*.toml`), loaded and cross-checked in one place.
//!
//! Invariants: names in declarations are namespace-free; [`Catalog::topic_name`] applies the
//! configured namespace, so tests can run the same declarations on private topics. Every
//! reference (a topic's schema, a processor's input and outputs) resolves, or loading fails.

use crate::settings::Settings;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> CatalogError {
    CatalogError::Invalid { path: path.to_path_buf(), message: message.into() }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_ms: i64,
    pub cleanup_policy: String,
    pub compression: String,
    #[serde(default)]
    pub value_schema: Option<String>,
    #[serde(default)]
    pub ingress_produce: bool,
    /// How the gateway takes values: `avro` (JSON checked against the registered schema; the
    /// default when `value_schema` is set) or `binary` (base64 bytes; the default otherwise).
    #[serde(default)]
    pub value_format: Option<ValueFormat>,
    /// Further topic configs, applied as given.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    Avro,
    Binary,
}

impl TopicDecl {
    /// The effective value format of the gateway for this topic.
    pub fn value_format(&self) -> ValueFormat {
        self.value_format.unwrap_or(if self.value_schema.is_some() { ValueFormat::Avro } else { ValueFormat::Binary })
    }

    /// The topic configs DevCycle manages for this topic.
    pub fn managed_configs(&self) -> BTreeMap<String, String> {
        let mut c = self.configs.clone();
        c.insert("retention.ms".into(), self.retention_ms.to_string());
        c.insert("cleanup.policy".into(), self.cleanup_policy.clone());
        c.insert("compression.type".into(), self.compression.clone());
        c
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// In order within a partition.
    Partition,
    /// In order per record key; concurrent across keys.
    Key,
    /// Any order; only contiguous completed offsets are committed.
    Unordered,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub task_ms: u64,
    pub shutdown_grace_ms: u64,
    /// A task still running after this long is recorded and announced as `running`; one that
    /// ends sooner is written once, straight to its final state with both of its events.
    /// 0: every task is recorded `running` before it runs.
    #[serde(default)]
    pub running_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    pub results: String,
    pub events: String,
    pub dead_letters: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSpec {
    pub name: String,
    pub handler: String,
    pub input: String,
    pub group: String,
    pub concurrency: usize,
    pub max_buffered: usize,
    /// Bytes (keys and values) of the held records not yet started before the partitions pause.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    pub ordering: Ordering,
    pub guarantee: Guarantee,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub outputs: Outputs,
}

fn default_max_buffered_bytes() -> usize {
    64 << 20
}

#[derive(Debug, Clone)]
pub struct Catalog {
    namespace: String,
    pub topics: BTreeMap<String, TopicDecl>,
    /// Schema name (file stem) to its JSON text.
    pub schemas: BTreeMap<String, String>,
    pub processors: BTreeMap<String, ProcessorSpec>,
}

impl Catalog {
    pub fn load(settings: &Settings) -> Result<Catalog, CatalogError> {
        let mut topics = BTreeMap::new();
        for path in files(&settings.paths.topics, "toml")? {
            let decl: TopicDecl = parse_toml(&path)?;
            if decl.partitions < 1 || decl.replication_factor < 1 {
                return Err(invalid(&path, "partitions and replication_factor must be >= 1"));
            }
            topics.insert(decl.name.clone(), decl);
        }
        let mut schemas = BTreeMap::new();
        for path in files(&settings.paths.schemas, "avsc")? {
            let text = read(&path)?;
            apache_avro::Schema::parse_str(&text).map_err(|e| invalid(&path, format!("invalid Avro schema: {e}")))?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            schemas.insert(stem.to_string(), text);
        }
        let mut processors = BTreeMap::new();
        for path in files(&settings.paths.processors, "toml")? {
            let spec: ProcessorSpec = parse_toml(&path)?;
            if spec.concurrency == 0 || spec.max_buffered < spec.concurrency || spec.max_buffered_bytes == 0 {
                return Err(invalid(
                    &path,
                    "need concurrency >= 1, max_buffered >= concurrency and max_buffered_bytes >= 1",
                ));
            }
            if spec.retry.max_attempts == 0 {
                return Err(invalid(&path, "retry.max_attempts must be >= 1"));
            }
            for t in [&spec.input, &spec.outputs.results, &spec.outputs.events, &spec.outputs.dead_letters] {
                if !topics.contains_key(t) {
                    return Err(invalid(&path, format!("topic `{t}` is not declared in topics/")));
                }
            }
            processors.insert(spec.name.clone(), spec);
        }
        for decl in topics.values() {
            if decl.value_format == Some(ValueFormat::Avro) && decl.value_schema.is_none() {
                return Err(invalid(
                    &settings.paths.topics.join(format!("{}.toml", decl.name)),
                    "value_format = \"avro\" needs a value_schema",
                ));
            }
            if let Some(s) = &decl.value_schema {
                if !schemas.contains_key(s) {
                    return Err(invalid(
                        &settings.paths.topics.join(format!("{}.toml", decl.name)),
                        format!("value_schema `{s}` has no schemas/{s}.avsc"),
                    ));
                }
            }
        }
        Ok(Catalog { namespace: settings.kafka.namespace.clone(), topics, schemas, processors })
    }

    /// The Kafka name of a declared topic (namespace applied).
    pub fn topic_name(&self, declared: &str) -> String {
        format!("{}{}", self.namespace, declared)
    }

    /// The consumer group of a processor (namespace applied).
    pub fn group_name(&self, declared: &str) -> String {
        format!("{}{}", self.namespace, declared)
    }

    /// The registry subject of a declared topic's values.
    pub fn value_subject(&self, declared: &str) -> String {
        format!("{}-value", self.topic_name(declared))
    }

    pub fn processor(&self, name: &str) -> Option<&ProcessorSpec> {
        self.processors.get(name)
    }
}

fn files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, CatalogError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CatalogError::Read { path: dir.to_path_buf(), source })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(path).map_err(|source| CatalogError::Read { path: path.to_path_buf(), source })
}

fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CatalogError> {
    let text = read(path)?;
    let de = toml::Deserializer::new(&text);
    serde_path_to_error::deserialize(de)
        .map_err(|e| invalid(path, format!("key `{}`: {}", e.path(), e.inner().message())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_declarations_load_and_resolve() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut s = Settings::load_with_env(&root.join("config"), &Default::default()).unwrap();
        s.paths.topics = root.join("topics");
        s.paths.schemas = root.join("schemas");
        s.paths.processors = root.join("processors");
        s.kafka.namespace = "t1.".into();
        let c = Catalog::load(&s).unwrap();
        for t in ["devcycle.task-requests", "devcycle.task-results", "devcycle.task-events", "devcycle.dead-letters"] {
            assert!(c.topics.contains_key(t), "{t}");
        }
        for s in ["TaskRequest", "TaskResult", "TaskEvent"] {
            assert!(c.schemas.contains_key(s));
        }
        let p = c.processor("agent-executor").unwrap();
        assert_eq!(c.topic_name(&p.input), "t1.devcycle.task-requests");
        assert_eq!(c.value_subject(&p.input), "t1.devcycle.task-requests-value");
    }
}
