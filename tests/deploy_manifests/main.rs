//! Static checks of the deployment files against the spec and the repository's declarations:
//! every YAML document under `deploy/` (Kubernetes manifests, kustomizations), `docker-compose.yml`
//! and the Grafana dashboard. No services are needed.
//!
//! What is checked, and against what:
//! - probes: paths `/health` (liveness), `/ready` (readiness), `/startup` (startup), timeout 5 s,
//!   period 10 s (the spec), required on every container, on `http.port` of `config/default.toml`
//!   for the ingress and on `metrics.port` for processors (likewise their containerPorts and the
//!   compose healthchecks);
//! - resources: the spec's API-service and agent-execution requests and limits;
//! - environment: every variable is one of the settings' names (`ENV_KEYS`) or a
//!   `DEVCYCLE__SECTION__KEY` naming a key of `config/default.toml`, and the ConfigMap + Secret
//!   (and each compose service's environment) load as production settings;
//! - workloads: container arguments parse as a `devcycle` subcommand, processors exist in
//!   `processors/`, one Deployment and one KEDA ScaledObject per processor whose group, topic and
//!   `maxReplicaCount` follow the processor and topic declarations;
//! - the dashboard only queries `devcycle_*` metrics registered in `src/events/mod.rs`.

use clap::Parser;
use devcycle::cli::{Cli, Command};
use devcycle::settings::{Settings, ENV_KEYS};
use serde::Deserialize;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod compose;
mod containers;
mod dashboard;
mod kubernetes;
mod self_checks;

use containers::*;

const PROBES: [(&str, &str); 3] =
    [("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/startup")];
const PROBE_TIMEOUT_SECONDS: u64 = 5;
const PROBE_PERIOD_SECONDS: u64 = 10;

/// (requests.memory, requests.cpu, limits.memory, limits.cpu)
type Resources = [&'static str; 4];
const API_RESOURCES: Resources = ["256Mi", "100m", "512Mi", "500m"];
const AGENT_RESOURCES: Resources = ["512Mi", "200m", "1Gi", "1000m"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn assert_no_errors(what: &str, errors: &[String]) {
    assert!(errors.is_empty(), "{what}: {} problem(s):\n  {}", errors.len(), errors.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Loading

/// One YAML document and the file it came from.
struct Doc {
    file: PathBuf,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    fn name(&self) -> &str {
        at(&self.value, "metadata.name").and_then(Value::as_str).unwrap_or("")
    }
}

/// Every document of a (multi-document) YAML text; empty documents are skipped.
fn parse_yaml_docs(text: &str, file: &Path) -> Vec<Doc> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display())))
        .filter(|v| !v.is_null())
        .map(|value| Doc { file: file.to_path_buf(), value })
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}

fn deploy_docs() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    assert!(!files.is_empty(), "no YAML under deploy/");
    files.iter().flat_map(|f| parse_yaml_docs(&read(f), f)).collect()
}

fn compose() -> Value {
    let path = root().join("docker-compose.yml");
    let mut docs = parse_yaml_docs(&read(&path), &path);
    assert_eq!(docs.len(), 1, "docker-compose.yml must hold one document");
    docs.remove(0).value
}

fn default_toml() -> toml::Table {
    read(&root().join("config/default.toml")).parse().expect("config/default.toml parses")
}

/// An integer port of config/default.toml (`section.port`).
fn config_port(section: &str) -> u64 {
    let port = default_toml()[section]["port"].as_integer().unwrap_or_else(|| panic!("{section}.port is an integer"));
    u64::try_from(port).unwrap_or_else(|_| panic!("{section}.port is positive"))
}

/// Where the ingress serves its API (and, besides metrics.port, its probes).
fn http_port() -> u64 {
    config_port("http")
}

/// Where every process serves its probes and /metrics from their own thread.
fn metrics_port() -> u64 {
    let port = config_port("metrics");
    assert_ne!(port, 0, "metrics.port 0 (a free port) cannot be probed; config/default.toml must fix it");
    port
}

fn toml_file(path: &Path) -> toml::Table {
    read(path).parse().unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()))
}

/// processors/<name>.toml, if it exists.
fn processor_decl(name: &str) -> Option<toml::Table> {
    let path = root().join("processors").join(format!("{name}.toml"));
    path.is_file().then(|| toml_file(&path))
}

fn declared_processors() -> BTreeSet<String> {
    std::fs::read_dir(root().join("processors"))
        .expect("processors/ exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Value helpers

/// The value at a dotted path of mapping keys.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path).and_then(Value::as_sequence).map(Vec::as_slice).unwrap_or(&[])
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

/// A scalar as text (YAML numbers and booleans included).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping of scalars (labels, ConfigMap data, compose environment) as strings.
fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(m) = v.and_then(Value::as_mapping) {
        for (k, v) in m {
            let k = k.as_str().expect("string key").to_string();
            out.insert(k, scalar(v).unwrap_or_default());
        }
    }
    out
}

fn is_subset(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// Environment variables

/// Whether `key` (dotted) names a value (not a table) in config/default.toml.
fn config_key_exists(config: &toml::Table, key: &str) -> bool {
    let mut parts = key.split('.').peekable();
    let mut table = config;
    while let Some(part) = parts.next() {
        match table.get(part) {
            Some(toml::Value::Table(t)) if parts.peek().is_some() => table = t,
            Some(toml::Value::Table(_)) | None => return false,
            Some(_) => return parts.peek().is_none(),
        }
    }
    false
}

/// Ok if `name` is one of the settings' variables or a `DEVCYCLE__X__Y` naming a config key.
fn check_env_name(config: &toml::Table, name: &str) -> Result<(), String> {
    if ENV_KEYS.iter().any(|(var, _)| *var == name) {
        return Ok(());
    }
    let Some(rest) = name.strip_prefix("DEVCYCLE__") else {
        return Err(format!("`{name}` is neither a spec variable nor DEVCYCLE__SECTION__KEY"));
    };
    let key = rest.to_ascii_lowercase().replace("__", ".");
    if config_key_exists(config, &key) {
        Ok(())
    } else {
        Err(format!("`{name}` maps to `{key}`, which config/default.toml does not have"))
    }
}

/// Loads `env` as the process environment would be, from the repository's config/.
fn load_settings(env: &BTreeMap<String, String>) -> Result<Settings, String> {
    Settings::load_with_env(&root().join("config"), env).map_err(|e| e.to_string())
}
