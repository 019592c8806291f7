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

// ---------------------------------------------------------------------------------------------
// Containers

/// The container's argv: command then args.
fn argv(container: &Value) -> Vec<String> {
    seq(container, "command").iter().chain(seq(container, "args")).filter_map(scalar).collect()
}

/// The parsed `devcycle` subcommand of an argv (which must start with the binary).
fn subcommand(argv: &[String]) -> Result<Command, String> {
    match argv.first().map(String::as_str) {
        Some("devcycle") => Cli::try_parse_from(argv)
            .map(|c| c.command)
            .map_err(|e| format!("`{}` is not a devcycle command line: {e}", argv.join(" "))),
        _ => Err(format!("argv `{}` must start with `devcycle`", argv.join(" "))),
    }
}

/// The containerPort a probe/Service port (number or port name) refers to.
fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    seq(container, "ports")
        .iter()
        .find(|p| str_at(p, "name") == Some(name))
        .and_then(|p| at(p, "containerPort")?.as_u64())
}

/// The three spec probes, on `port` (`port_key` names its config key, for messages).
fn check_probes(container: &Value, port_key: &str, want_port: u64, errors: &mut Vec<String>) {
    let cname = str_at(container, "name").unwrap_or("?");
    for (field, path) in PROBES {
        let Some(probe) = container.get(field) else {
            errors.push(format!("container {cname}: no {field} (spec: GET {path} on {port_key})"));
            continue;
        };
        match str_at(probe, "httpGet.path") {
            Some(p) if p == path => {}
            other => errors.push(format!("container {cname}: {field} path {other:?}, spec {path}")),
        }
        let port = at(probe, "httpGet.port").and_then(|p| resolve_port(container, p));
        if port != Some(want_port) {
            errors.push(format!("container {cname}: {field} port {port:?}, {port_key} {want_port}"));
        }
        for (key, want) in [("timeoutSeconds", PROBE_TIMEOUT_SECONDS), ("periodSeconds", PROBE_PERIOD_SECONDS)] {
            let got = probe.get(key).and_then(Value::as_u64);
            if got != Some(want) {
                errors.push(format!("container {cname}: {field}.{key} {got:?}, spec {want}"));
            }
        }
    }
}

fn check_resources(container: &Value, want: Resources, errors: &mut Vec<String>) {
    let cname = str_at(container, "name").unwrap_or("?");
    let keys = ["requests.memory", "requests.cpu", "limits.memory", "limits.cpu"];
    for (key, want) in keys.iter().zip(want) {
        let got = at(container, &format!("resources.{key}")).and_then(scalar);
        if got.as_deref() != Some(want) {
            errors.push(format!("container {cname}: resources.{key} {got:?}, spec {want}"));
        }
    }
}

/// The processor a Deployment runs (`devcycle process <name>`), if any.
fn processor_of(deployment: &Value) -> Option<String> {
    seq(deployment, "spec.template.spec.containers").iter().find_map(|c| match subcommand(&argv(c)) {
        Ok(Command::Process { name }) => Some(name),
        _ => None,
    })
}

fn is_ingress(deployment: &Value) -> bool {
    seq(deployment, "spec.template.spec.containers")
        .iter()
        .any(|c| matches!(subcommand(&argv(c)), Ok(Command::Ingress)))
}

/// Everything checked on one Deployment (returns the problems found).
fn check_deployment(doc: &Value, env_sources: &BTreeSet<String>) -> Vec<String> {
    let mut errors = Vec::new();
    let config = default_toml();
    let name = str_at(doc, "metadata.name").unwrap_or("?").to_string();
    let pod = at(doc, "spec.template.spec").expect("Deployment has spec.template.spec");
    let labels = string_map(at(doc, "spec.template.metadata.labels"));
    if !is_subset(&string_map(at(doc, "spec.selector.matchLabels")), &labels) {
        errors.push(format!("{name}: spec.selector does not match the pod template labels"));
    }
    if at(pod, "securityContext.runAsNonRoot").and_then(Value::as_bool) != Some(true) {
        errors.push(format!("{name}: pod securityContext.runAsNonRoot must be true"));
    }
    let containers = seq(pod, "containers");
    if containers.is_empty() {
        errors.push(format!("{name}: no containers"));
    }
    for c in containers {
        let cname = str_at(c, "name").unwrap_or("?");
        let argv = argv(c);
        let command = match subcommand(&argv) {
            Ok(command) => command,
            Err(e) => {
                errors.push(format!("{name}/{cname}: {e}"));
                continue;
            }
        };
        // Every process serves its probes (and /metrics) on metrics.port.
        let (port_key, port) = ("metrics.port", metrics_port());
        match &command {
            Command::Ingress => {
                check_probes(c, port_key, port, &mut errors);
                check_resources(c, API_RESOURCES, &mut errors);
            }
            Command::Process { name: processor } => {
                // `devcycle process` serves the probes and /metrics on metrics.port.
                check_probes(c, port_key, port, &mut errors);
                check_resources(c, AGENT_RESOURCES, &mut errors);
                match processor_decl(processor) {
                    None => errors.push(format!("{name}: no processors/{processor}.toml")),
                    Some(decl) => {
                        let grace_ms = decl
                            .get("timeouts")
                            .and_then(|t| t.get("shutdown_grace_ms"))
                            .and_then(toml::Value::as_integer)
                            .unwrap_or(0);
                        let pod_grace = pod.get("terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
                        if pod_grace * 1000 <= grace_ms {
                            errors.push(format!(
                                "{name}: terminationGracePeriodSeconds {pod_grace} must exceed \
                                 the processor's shutdown_grace_ms {grace_ms}"
                            ));
                        }
                    }
                }
            }
            other => errors.push(format!("{name}/{cname}: unexpected subcommand {other:?}")),
        }
        // Prometheus scrapes the pod's /metrics where the container serves it.
        let annotations = string_map(at(doc, "spec.template.metadata.annotations"));
        let want_port = port.to_string();
        for (key, want) in [
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", want_port.as_str()),
            ("prometheus.io/path", "/metrics"),
        ] {
            let got = annotations.get(key).map(String::as_str);
            if got != Some(want) {
                errors.push(format!("{name}: pod annotation {key} {got:?}, want {want} ({port_key})"));
            }
        }
        // Declared ports: the probe port, and the API port on the ingress; nothing else.
        let wanted: Vec<u64> = match &command {
            Command::Ingress => vec![http_port(), port],
            _ => vec![port],
        };
        let declared: Vec<Option<u64>> =
            seq(c, "ports").iter().map(|p| at(p, "containerPort").and_then(Value::as_u64)).collect();
        for got in &declared {
            if !got.is_some_and(|g| wanted.contains(&g)) {
                errors.push(format!("{name}/{cname}: containerPort {got:?}, {port_key} {port}"));
            }
        }
        for want in &wanted {
            if !declared.contains(&Some(*want)) {
                errors.push(format!("{name}/{cname}: no containerPort {want}"));
            }
        }
        if at(c, "securityContext.readOnlyRootFilesystem").and_then(Value::as_bool) != Some(true) {
            errors.push(format!("{name}/{cname}: securityContext.readOnlyRootFilesystem must be true"));
        }
        if at(c, "securityContext.allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false) {
            errors.push(format!("{name}/{cname}: securityContext.allowPrivilegeEscalation must be false"));
        }
        for e in seq(c, "env") {
            if let Err(msg) = check_env_name(&config, str_at(e, "name").unwrap_or("")) {
                errors.push(format!("{name}/{cname}: {msg}"));
            }
        }
        for source in seq(c, "envFrom") {
            for kind in ["configMapRef", "secretRef"] {
                if let Some(r) = str_at(source, &format!("{kind}.name")) {
                    if !env_sources.contains(r) {
                        errors.push(format!("{name}/{cname}: envFrom {kind} `{r}` is not defined"));
                    }
                }
            }
        }
    }
    errors
}

/// The environment the ConfigMaps and Secrets of deploy/ give (Secret placeholders as is).
fn manifest_env(docs: &[Doc]) -> BTreeMap<String, (String, String)> {
    let mut env = BTreeMap::new();
    for d in docs {
        let fields: &[&str] = match d.kind() {
            "ConfigMap" => &["data"],
            "Secret" => &["stringData", "data"],
            _ => continue,
        };
        for field in fields {
            for (k, v) in string_map(d.value.get(*field)) {
                env.insert(k, (v, format!("{} {}", d.kind(), d.name())));
            }
        }
    }
    env
}

// ---------------------------------------------------------------------------------------------
// Tests: Kubernetes

#[test]
fn kustomizations_list_every_manifest() {
    let docs = deploy_docs();
    let mut errors = Vec::new();
    let kustomizations: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Kustomization").collect();
    let dirs: BTreeSet<PathBuf> = kustomizations.iter().map(|k| k.file.parent().unwrap().into()).collect();
    for want in ["deploy/base", "deploy/overlays/production"] {
        if !dirs.contains(&root().join(want)) {
            errors.push(format!("no {want}/kustomization.yaml"));
        }
    }
    for k in &kustomizations {
        let dir = k.file.parent().unwrap();
        let listed: BTreeSet<PathBuf> =
            seq(&k.value, "resources").iter().filter_map(Value::as_str).map(|r| dir.join(r)).collect();
        for r in &listed {
            if !r.exists() {
                errors.push(format!("{}: resource {} does not exist", k.file.display(), r.display()));
            }
        }
        // A manifest beside the kustomization that it does not list would silently not deploy.
        let mut here = Vec::new();
        yaml_files(dir, &mut here);
        for f in here.iter().filter(|f| f.parent() == Some(dir) && f.file_name().unwrap() != "kustomization.yaml") {
            if !listed.contains(f) {
                errors.push(format!("{}: {} is not listed in resources", k.file.display(), f.display()));
            }
        }
        for p in seq(&k.value, "patches") {
            if let Some(path) = str_at(p, "path") {
                if !dir.join(path).is_file() {
                    errors.push(format!("{}: patch {path} does not exist", k.file.display()));
                }
            }
            // Probes and resources are the spec's: overlays must not change them.
            let text = str_at(p, "patch").unwrap_or("");
            if text.contains("Probe") || text.contains("resources") {
                errors.push(format!("{}: a patch changes probes or resources", k.file.display()));
            }
        }
    }
    assert_no_errors("kustomizations", &errors);
}

#[test]
fn deployments_follow_spec_and_declarations() {
    let docs = deploy_docs();
    let env_sources: BTreeSet<String> =
        docs.iter().filter(|d| matches!(d.kind(), "ConfigMap" | "Secret")).map(|d| d.name().to_string()).collect();
    let deployments: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Deployment").collect();
    let mut errors = Vec::new();
    for d in &deployments {
        errors.extend(check_deployment(&d.value, &env_sources));
    }
    if !deployments.iter().any(|d| is_ingress(&d.value)) {
        errors.push("no Deployment runs `devcycle ingress`".into());
    }
    let deployed: BTreeSet<String> = deployments.iter().filter_map(|d| processor_of(&d.value)).collect();
    if deployed != declared_processors() {
        errors.push(format!(
            "processor Deployments {deployed:?} differ from processors/*.toml {:?}",
            declared_processors()
        ));
    }
    assert_no_errors("Deployments", &errors);
}

#[test]
fn configmap_and_secret_are_known_production_settings() {
    let docs = deploy_docs();
    let config = default_toml();
    let env = manifest_env(&docs);
    let mut errors = Vec::new();
    for (name, (_, source)) in &env {
        if let Err(msg) = check_env_name(&config, name) {
            errors.push(format!("{source}: {msg}"));
        }
    }
    for d in docs.iter().filter(|d| d.kind() == "Secret") {
        for (k, v) in string_map(d.value.get("stringData")) {
            if !v.contains("REPLACE_ME") {
                errors.push(format!("Secret {}: {k} must be a REPLACE_ME placeholder", d.name()));
            }
        }
    }
    for required in [
        "ENVIRONMENT",
        "LOG_LEVEL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "SCHEMA_REGISTRY_URL",
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
    ] {
        if !env.contains_key(required) {
            errors.push(format!("no ConfigMap or Secret sets {required}"));
        }
    }
    assert_no_errors("ConfigMap/Secret", &errors);

    // With a real secret in place of the placeholder, the values load as production settings.
    let mut vars: BTreeMap<String, String> = env.into_iter().map(|(k, (v, _))| (k, v)).collect();
    vars.insert("SECRET_KEY".into(), "a-test-secret-that-is-long-enough-0123456789".into());
    let settings = load_settings(&vars).unwrap_or_else(|e| panic!("ConfigMap + Secret refused: {e}"));
    assert_eq!(u64::from(settings.http.port), http_port());
    assert_eq!(settings.http.host, "0.0.0.0", "the ingress must listen on every interface in a pod");
    assert_eq!(u64::from(settings.metrics.port), metrics_port());
    assert_eq!(settings.metrics.host, "0.0.0.0", "processors' probes must answer on every interface in a pod");
    assert!(format!("{:?}", settings.environment).eq_ignore_ascii_case("production"));
}

#[test]
fn services_autoscalers_and_budgets_target_the_workloads() {
    let docs = deploy_docs();
    let deployments: BTreeMap<&str, &Value> =
        docs.iter().filter(|d| d.kind() == "Deployment").map(|d| (d.name(), &d.value)).collect();
    let pod_labels = |d: &Value| string_map(at(d, "spec.template.metadata.labels"));
    let mut errors = Vec::new();
    let mut budgeted = BTreeSet::new();
    for doc in &docs {
        let v = &doc.value;
        let name = doc.name();
        match doc.kind() {
            "Service" => {
                let selector = string_map(at(v, "spec.selector"));
                let matched: Vec<(&&str, &&Value)> =
                    deployments.iter().filter(|(_, d)| is_subset(&selector, &pod_labels(d))).collect();
                if matched.len() != 1 || !is_ingress(matched[0].1) {
                    errors.push(format!("Service {name}: selector must match exactly the ingress pods"));
                    continue;
                }
                let container = &seq(matched[0].1, "spec.template.spec.containers")[0];
                for p in seq(v, "spec.ports") {
                    let target = p.get("targetPort").or_else(|| p.get("port"));
                    let resolved = target.and_then(|t| resolve_port(container, t));
                    if resolved != Some(http_port()) {
                        errors.push(format!("Service {name}: targetPort {resolved:?}, http.port {}", http_port()));
                    }
                }
            }
            "HorizontalPodAutoscaler" => {
                let target = str_at(v, "spec.scaleTargetRef.name").unwrap_or("");
                match deployments.get(target) {
                    None => errors.push(format!("HPA {name}: no Deployment {target}")),
                    Some(d) if processor_of(d).is_some() => {
                        errors.push(format!("HPA {name}: processor {target} is scaled by KEDA, not an HPA"))
                    }
                    Some(_) => {}
                }
            }
            "PodDisruptionBudget" => {
                let selector = string_map(at(v, "spec.selector.matchLabels"));
                let matched: Vec<&str> =
                    deployments.iter().filter(|(_, d)| is_subset(&selector, &pod_labels(d))).map(|(n, _)| *n).collect();
                if matched.len() != 1 {
                    errors.push(format!("PDB {name}: selector matches {matched:?}, want one Deployment"));
                }
                budgeted.extend(matched);
            }
            _ => {}
        }
    }
    for name in deployments.keys() {
        if !budgeted.contains(name) {
            errors.push(format!("Deployment {name} has no PodDisruptionBudget"));
        }
    }
    assert_no_errors("Service/HPA/PDB", &errors);
}

#[test]
fn keda_scaled_objects_follow_processor_and_topic_declarations() {
    let docs = deploy_docs();
    let env = manifest_env(&docs);
    let mut vars: BTreeMap<String, String> = env.into_iter().map(|(k, (v, _))| (k, v)).collect();
    vars.insert("SECRET_KEY".into(), "a-test-secret-that-is-long-enough-0123456789".into());
    let settings = load_settings(&vars).expect("ConfigMap + Secret load");
    let ns = &settings.kafka.namespace;
    let deployments: BTreeMap<&str, &Value> =
        docs.iter().filter(|d| d.kind() == "Deployment").map(|d| (d.name(), &d.value)).collect();
    let mut errors = Vec::new();
    let mut scaled = BTreeSet::new();
    for doc in docs.iter().filter(|d| d.kind() == "ScaledObject") {
        let (v, name) = (&doc.value, doc.name());
        let target = str_at(v, "spec.scaleTargetRef.name").unwrap_or("");
        let Some(processor) = deployments.get(target).and_then(|d| processor_of(d)) else {
            errors.push(format!("ScaledObject {name}: {target} is not a processor Deployment"));
            continue;
        };
        scaled.insert(processor.clone());
        let Some(decl) = processor_decl(&processor) else {
            errors.push(format!("ScaledObject {name}: no processors/{processor}.toml"));
            continue;
        };
        let input = decl["input"].as_str().expect("processor input");
        let group = decl["group"].as_str().expect("processor group");
        let topic = toml_file(&root().join("topics").join(format!("{input}.toml")));
        let partitions = topic["partitions"].as_integer().expect("topic partitions");
        let max = at(v, "spec.maxReplicaCount").and_then(Value::as_i64);
        if max != Some(partitions) {
            errors.push(format!("ScaledObject {name}: maxReplicaCount {max:?}, {input} has {partitions} partitions"));
        }
        let triggers: Vec<&Value> =
            seq(v, "spec.triggers").iter().filter(|t| str_at(t, "type") == Some("kafka")).collect();
        if triggers.is_empty() {
            errors.push(format!("ScaledObject {name}: no kafka trigger"));
        }
        for t in triggers {
            let want = [
                ("consumerGroup", format!("{ns}{group}")),
                ("topic", format!("{ns}{input}")),
                ("bootstrapServers", settings.kafka.bootstrap_servers.clone()),
            ];
            for (key, want) in want {
                let got = at(t, &format!("metadata.{key}")).and_then(scalar);
                if got.as_deref() != Some(want.as_str()) {
                    errors.push(format!("ScaledObject {name}: {key} {got:?}, want {want}"));
                }
            }
            let lag = at(t, "metadata.lagThreshold").and_then(scalar).and_then(|s| s.parse::<u64>().ok());
            if !matches!(lag, Some(n) if n > 0) {
                errors.push(format!("ScaledObject {name}: lagThreshold must be a positive integer"));
            }
        }
    }
    if scaled != declared_processors() {
        errors.push(format!("ScaledObjects cover {scaled:?}, processors are {:?}", declared_processors()));
    }
    assert_no_errors("ScaledObjects", &errors);
}

// ---------------------------------------------------------------------------------------------
// Tests: docker-compose.yml

/// Compose interpolation of `${NAME:-default}` / `${NAME-default}` to the default.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).expect("closed ${");
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").or_else(|| inner.split_once('-')).map(|(_, d)| d).unwrap_or(""));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The host of `scheme://[user@]host[:port]/...` or `host:port`.
fn url_host(url: &str) -> &str {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = after_scheme.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    host_port.split(':').next().unwrap_or("")
}

fn url_port(url: &str) -> Option<u64> {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = after_scheme.split('/').next().unwrap_or("");
    authority.rsplit_once(':')?.1.parse().ok()
}

/// Container ports of a compose service's `ports` ("8000", "8000:8000", "127.0.0.1:80:8000/tcp").
fn compose_container_ports(service: &Value) -> Vec<u64> {
    seq(service, "ports")
        .iter()
        .filter_map(|p| {
            let s = scalar(p)?;
            s.rsplit(':').next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Sequence(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => string_map(other),
    }
}

fn compose_command(service: &Value) -> Vec<String> {
    match service.get("command") {
        Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        Some(v) => v.as_sequence().map(|s| s.iter().filter_map(scalar).collect()).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// The service's healthcheck GETs a spec probe path on `port` (container side), every 10 s with a
/// 5 s timeout.
fn check_compose_healthcheck(name: &str, svc: &Value, port_key: &str, port: u64, errors: &mut Vec<String>) {
    let test: Vec<String> = seq(svc, "healthcheck.test").iter().filter_map(scalar).collect();
    let test = test.join(" ");
    // A URL ending in a probe path: `/healthz` is not `/health`.
    let probes_spec_path = test.split_whitespace().any(|word| {
        let url = word.trim_matches(|c| c == '"' || c == '\'');
        PROBES.iter().any(|(_, p)| url.ends_with(&format!(":{port}{p}")))
    });
    if !probes_spec_path {
        errors.push(format!("compose {name}: healthcheck `{test}` must GET a spec probe on :{port} ({port_key})"));
    }
    for (key, want) in [("interval", "10s"), ("timeout", "5s")] {
        let got = str_at(svc, &format!("healthcheck.{key}"));
        if got != Some(want) {
            errors.push(format!("compose {name}: healthcheck.{key} {got:?}, spec {want}"));
        }
    }
}

fn check_compose(compose: &Value) -> Vec<String> {
    let config = default_toml();
    let port = http_port();
    let mut errors = Vec::new();
    let services = compose.get("services").and_then(Value::as_mapping).expect("compose services");
    let by_name: BTreeMap<&str, &Value> =
        services.iter().map(|(k, v)| (k.as_str().expect("service name"), v)).collect();
    for (infra, image) in [
        ("kafka", "apache/kafka"),
        ("registry", "apicurio/apicurio-registry"),
        ("postgres", "postgres"),
        ("redis", "redis"),
    ] {
        match by_name.get(infra).and_then(|s| str_at(s, "image")) {
            Some(i) if i.split(':').next() == Some(image) => {}
            other => errors.push(format!("compose: service {infra} image {other:?}, want {image}:<tag>")),
        }
    }
    let mut devcycle_services = 0;
    let mut processors_run = BTreeSet::new();
    for (name, svc) in &by_name {
        let Some(dockerfile) = str_at(svc, "build.dockerfile") else {
            continue;
        };
        devcycle_services += 1;
        let context = str_at(svc, "build.context").unwrap_or(".");
        if !root().join(context).join(dockerfile).is_file() || dockerfile != "deploy/Dockerfile" {
            errors.push(format!("compose {name}: build must use deploy/Dockerfile (context {context})"));
        }
        let mut argv = vec!["devcycle".to_string()];
        argv.extend(compose_command(svc));
        match subcommand(&argv) {
            Ok(Command::Ingress) => {
                if !compose_container_ports(svc).contains(&port) {
                    errors.push(format!("compose {name}: must publish container port {port} (http.port)"));
                }
                check_compose_healthcheck(name, svc, "http.port", port, &mut errors);
            }
            Ok(Command::Process { name: processor }) => {
                check_compose_healthcheck(name, svc, "metrics.port", metrics_port(), &mut errors);
                if processor_decl(&processor).is_none() {
                    errors.push(format!("compose {name}: no processors/{processor}.toml"));
                }
                processors_run.insert(processor);
            }
            Ok(other) => errors.push(format!("compose {name}: unexpected subcommand {other:?}")),
            Err(e) => errors.push(format!("compose {name}: {e}")),
        }
        let env = compose_env(svc);
        for var in env.keys() {
            if let Err(msg) = check_env_name(&config, var) {
                errors.push(format!("compose {name}: {msg}"));
            }
        }
        let vars: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.clone(), interpolate(v))).collect();
        let settings = match load_settings(&vars) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("compose {name}: environment refused: {e}"));
                continue;
            }
        };
        if u64::from(settings.http.port) != port {
            errors.push(format!("compose {name}: http.port {} differs from {port}", settings.http.port));
        }
        if u64::from(settings.metrics.port) != metrics_port() {
            errors.push(format!(
                "compose {name}: metrics.port {} differs from {}",
                settings.metrics.port,
                metrics_port()
            ));
        }
        if matches!(subcommand(&argv), Ok(Command::Process { .. })) && settings.metrics.host != "0.0.0.0" {
            errors.push(format!(
                "compose {name}: metrics.host {} must be 0.0.0.0 for the healthcheck to reach it",
                settings.metrics.host
            ));
        }
        // Every service the settings point at is a compose service this one waits for.
        let mut deps: Vec<(String, Option<u64>)> = vec![
            (url_host(settings.database.url.expose()).into(), None),
            (url_host(settings.redis.url.expose()).into(), None),
            (url_host(&settings.schema_registry.url).into(), url_port(&settings.schema_registry.url)),
        ];
        for server in settings.kafka.bootstrap_servers.split(',') {
            deps.push((url_host(server).into(), None));
            let advertised = by_name
                .get(url_host(server))
                .and_then(|k| compose_env(k).get("KAFKA_ADVERTISED_LISTENERS").cloned())
                .unwrap_or_default();
            if !advertised.contains(&format!("//{server}")) {
                errors.push(format!("compose {name}: Kafka does not advertise {server} ({advertised})"));
            }
        }
        if !settings.schema_registry.url.ends_with("/apis/ccompat/v7") {
            errors.push(format!("compose {name}: SCHEMA_REGISTRY_URL must be the ccompat v7 API"));
        }
        for (host, host_port) in deps {
            let Some(dep) = by_name.get(host.as_str()) else {
                errors.push(format!("compose {name}: `{host}` is not a compose service"));
                continue;
            };
            if let Some(p) = host_port {
                if !compose_container_ports(dep).contains(&p) {
                    errors.push(format!("compose {name}: {host} does not serve port {p}"));
                }
            }
            if dep.get("healthcheck").is_none() {
                errors.push(format!("compose: {host} has no healthcheck"));
            }
            if str_at(svc, &format!("depends_on.{host}.condition")) != Some("service_healthy") {
                errors.push(format!("compose {name}: must depend on {host} with condition service_healthy"));
            }
        }
    }
    if devcycle_services == 0 {
        errors.push("compose: no service builds deploy/Dockerfile".into());
    }
    if processors_run != declared_processors() {
        errors.push(format!("compose runs processors {processors_run:?}, declared {:?}", declared_processors()));
    }
    errors
}

#[test]
fn compose_stack_matches_config_and_declarations() {
    assert_no_errors("docker-compose.yml", &check_compose(&compose()));
}

// ---------------------------------------------------------------------------------------------
// Tests: Grafana dashboard

/// The metric names a PromQL expression selects (not functions, labels, keywords or numbers).
fn promql_metric_names(expr: &str) -> Vec<String> {
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    const KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |mut i: usize, close: char| -> usize {
        let mut quote = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(_) if c == '\\' => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == close => return i + 1,
                None => {}
            }
            i += 1;
        }
        i
    };
    let mut names = Vec::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_to(i + 1, c),
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '(' if label_list_next => {
                label_list_next = false;
                i = skip_to(i + 1, ')');
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if GROUPING.contains(&word.as_str()) {
                    label_list_next = next == Some(&'(');
                } else if KEYWORDS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) {
                } else if next != Some(&'(') {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every metric name src/events/mod.rs registers, as exposed (`devcycle_` prefix; counters with
/// `_total`; histograms with `_bucket`, `_sum`, `_count`).
fn registered_metric_names() -> BTreeSet<String> {
    let src = read(&root().join("src/events/mod.rs"));
    // Field name -> Counter | Gauge | Histogram, from `pub field: Family<Labels, Type ...>`.
    let mut types = BTreeMap::new();
    for line in src.lines() {
        let line = line.trim();
        if let Some((field, ty)) = line.strip_prefix("pub ").and_then(|l| l.split_once(':')) {
            let kind = ["Histogram", "Counter", "Gauge"].into_iter().find(|k| ty.contains(k));
            if let Some(kind) = kind {
                types.insert(field.trim().to_string(), kind);
            }
        }
    }
    let mut names = BTreeSet::new();
    for call in src.split(".register(").skip(1) {
        let call = &call[..call.find(");").unwrap_or(call.len())];
        let name = call.split('"').nth(1).expect("register(\"name\", ...)");
        let field = call
            .split("m.")
            .nth(1)
            .and_then(|f| f.split(".clone()").next())
            .unwrap_or_else(|| panic!("register(\"{name}\") without m.<field>.clone()"));
        let base = format!("devcycle_{name}");
        match types.get(field.trim()) {
            Some(&"Counter") => {
                names.insert(format!("{base}_total"));
            }
            Some(&"Histogram") => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{base}{suffix}"));
                }
            }
            Some(_) => {
                names.insert(base);
            }
            None => panic!("src/events/mod.rs: cannot tell the type of metric field `{field}`"),
        }
    }
    names
}

fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn check_dashboard_exprs(exprs: &[String], registered: &BTreeSet<String>) -> Vec<String> {
    let mut errors = Vec::new();
    for expr in exprs {
        let names = promql_metric_names(expr);
        if names.is_empty() {
            errors.push(format!("`{expr}` selects no metric"));
        }
        for n in names {
            if !n.starts_with("devcycle_") {
                errors.push(format!("`{expr}`: metric {n} lacks the devcycle_ prefix"));
            } else if !registered.contains(&n) {
                errors.push(format!("`{expr}`: metric {n} is not registered in src/events/mod.rs"));
            }
        }
    }
    errors
}

#[test]
fn dashboard_queries_registered_metrics() {
    let path = root().join("deploy/grafana/devcycle-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)).expect("dashboard is valid JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let registered = registered_metric_names();
    assert!(registered.contains("devcycle_http_requests_total"), "parsed {registered:?}");
    assert!(registered.contains("devcycle_http_request_duration_seconds_bucket"), "parsed {registered:?}");
    assert!(registered.contains("devcycle_tasks_in_flight"), "parsed {registered:?}");
    assert!(registered.contains("devcycle_consumer_lag"), "parsed {registered:?}");
    let mut errors = check_dashboard_exprs(&exprs, &registered);
    let all = exprs.join("\n");
    for q in ["0.5", "0.95", "0.99"] {
        let want = format!("histogram_quantile({q}, sum by (le) (rate(devcycle_http_request_duration_seconds_bucket");
        if !all.contains(&want) {
            errors.push(format!("no P{} latency panel (`{want}...`)", &q[2..]));
        }
    }
    for metric in [
        "devcycle_http_requests_total",
        "devcycle_consumer_lag",
        "devcycle_tasks_in_flight",
        "devcycle_task_executions_total",
        "devcycle_dead_letters_total",
        "devcycle_retries_total",
        "devcycle_kafka_produce_duration_seconds_bucket",
    ] {
        if !exprs.iter().any(|e| promql_metric_names(e).iter().any(|n| n == metric)) {
            errors.push(format!("no panel queries {metric}"));
        }
    }
    assert_no_errors("Grafana dashboard", &errors);
}

// ---------------------------------------------------------------------------------------------
// The checks themselves catch mistakes

fn ingress_deployment() -> Value {
    deploy_docs()
        .into_iter()
        .find(|d| d.kind() == "Deployment" && is_ingress(&d.value))
        .expect("an ingress Deployment")
        .value
}

fn processor_deployment() -> Value {
    deploy_docs()
        .into_iter()
        .find(|d| d.kind() == "Deployment" && processor_of(&d.value).is_some())
        .expect("a processor Deployment")
        .value
}

/// Removes the key at a dotted path (its parent must be a mapping).
fn remove(v: &mut Value, path: &str) {
    let (parent, key) = path.rsplit_once('.').expect("a dotted path");
    let mut cur = v;
    for k in parent.split('.') {
        cur = match k.parse::<usize>() {
            Ok(i) => &mut cur.as_sequence_mut().expect("sequence")[i],
            Err(_) => cur.get_mut(k).unwrap_or_else(|| panic!("no {k} in {path}")),
        };
    }
    cur.as_mapping_mut().expect("mapping").remove(key).unwrap_or_else(|| panic!("no {key} in {path}"));
}

fn set(v: &mut Value, path: &str, new: Value) {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &mut cur.as_sequence_mut().expect("sequence")[i],
            Err(_) => cur.get_mut(key).unwrap_or_else(|| panic!("no {key} in {path}")),
        };
    }
    *cur = new;
}

#[test]
fn checks_reject_broken_manifests() {
    let sources: BTreeSet<String> = ["devcycle-config", "devcycle-secrets"].map(String::from).into();
    let good = ingress_deployment();
    assert_no_errors("unmodified ingress", &check_deployment(&good, &sources));
    let c = "spec.template.spec.containers.0";
    let cases: Vec<(&str, Value, &str)> = vec![
        ("livenessProbe.httpGet.path", "/healthz".into(), "livenessProbe path"),
        ("readinessProbe.httpGet.path", "/health".into(), "readinessProbe path"),
        ("startupProbe.timeoutSeconds", 1.into(), "startupProbe.timeoutSeconds"),
        ("livenessProbe.periodSeconds", 30.into(), "livenessProbe.periodSeconds"),
        ("readinessProbe.httpGet.port", 9000.into(), "readinessProbe port"),
        ("resources.limits.memory", "1Gi".into(), "resources.limits.memory"),
        ("ports.0.containerPort", 8080.into(), "containerPort"),
        (
            "args",
            serde_norway::from_str("[process, no-such-processor]").unwrap(),
            "no processors/no-such-processor.toml",
        ),
        ("args", serde_norway::from_str("[serve]").unwrap(), "not a devcycle command line"),
        ("securityContext.readOnlyRootFilesystem", false.into(), "readOnlyRootFilesystem"),
        ("envFrom.0.configMapRef.name", "other-config".into(), "other-config"),
    ];
    for (path, value, expect) in cases {
        let mut broken = good.clone();
        set(&mut broken, &format!("{c}.{path}"), value);
        let errors = check_deployment(&broken, &sources);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "changing {path} should be reported ({expect}), got {errors:?}"
        );
    }

    // Processors: probes on metrics.port, and required.
    let good = processor_deployment();
    assert_no_errors("unmodified processor", &check_deployment(&good, &sources));
    let http = http_port();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("readinessProbe.httpGet.port", http.into(), "readinessProbe port Some(8000), metrics.port"),
        ("livenessProbe.httpGet.port", "http".into(), "livenessProbe port None"),
        ("ports.0.containerPort", http.into(), "containerPort Some(8000), metrics.port"),
        ("startupProbe.httpGet.path", "/ready".into(), "startupProbe path"),
        ("readinessProbe.periodSeconds", 30.into(), "readinessProbe.periodSeconds"),
    ];
    for (path, value, expect) in cases {
        let mut broken = good.clone();
        set(&mut broken, &format!("{c}.{path}"), value);
        let errors = check_deployment(&broken, &sources);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "processor: changing {path} should be reported ({expect}), got {errors:?}"
        );
    }
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let mut broken = good.clone();
        remove(&mut broken, &format!("{c}.{probe}"));
        let errors = check_deployment(&broken, &sources);
        assert!(errors.iter().any(|e| e.contains(&format!("no {probe}"))), "processor without {probe}: {errors:?}");
    }
    // Annotation keys hold dots, so not through `set`.
    let mut broken = good.clone();
    let annotations = broken
        .get_mut("spec")
        .and_then(|v| v.get_mut("template"))
        .and_then(|v| v.get_mut("metadata"))
        .and_then(|v| v.get_mut("annotations"))
        .and_then(Value::as_mapping_mut)
        .expect("processor pod annotations");
    annotations.insert("prometheus.io/port".into(), http.to_string().into());
    let errors = check_deployment(&broken, &sources);
    assert!(errors.iter().any(|e| e.contains("prometheus.io/port")), "scrape port {http}: {errors:?}");

    let config = default_toml();
    assert!(check_env_name(&config, "DATABASE_URL").is_ok());
    assert!(check_env_name(&config, "DEVCYCLE__HTTP__PORT").is_ok());
    assert!(check_env_name(&config, "DEVCYCLE__METRICS__PORT").is_ok());
    assert!(check_env_name(&config, "DEVCYCLE__METRICS__HOST").is_ok());
    assert!(check_env_name(&config, "DEVCYCLE__METRICS__PATH").is_err(), "metrics.path is not a key");
    assert!(check_env_name(&config, "DEVCYCLE__HTTP").is_err(), "a section is not a key");
    assert!(check_env_name(&config, "POSTGRES_URL").is_err());

    let mut compose = compose();
    set(
        &mut compose,
        "services.devcycle-ingress.healthcheck.test",
        serde_norway::from_str("[CMD, curl, -f, 'http://127.0.0.1:8000/healthz']").unwrap(),
    );
    set(&mut compose, "services.devcycle-ingress.environment.REDIS_URL", "redis://cache:6379/0".into());
    set(
        &mut compose,
        "services.devcycle-agent-executor.healthcheck.test",
        serde_norway::from_str("[CMD, curl, -f, 'http://127.0.0.1:8000/ready']").unwrap(),
    );
    let errors = check_compose(&compose);
    assert!(errors.iter().any(|e| e.contains("devcycle-ingress: healthcheck")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("devcycle-agent-executor: healthcheck")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("`cache` is not a compose service")), "{errors:?}");
}

#[test]
fn promql_scanner_finds_metric_names_only() {
    assert_eq!(
        promql_metric_names(
            "histogram_quantile(0.99, sum by (le, route) (rate(devcycle_x_bucket{route=~\"a|b\"}[$__rate_interval])))"
        ),
        ["devcycle_x_bucket"]
    );
    assert_eq!(
        promql_metric_names("sum(rate(a_total[5m])) / on(job) group_left sum without (x) (b) > bool 0.5"),
        ["a_total", "b"]
    );
    let registered = registered_metric_names();
    let errors = check_dashboard_exprs(
        &["rate(devcycle_http_request_total[5m])".into(), "up".into(), "devcycle_consumer_lag".into()],
        &registered,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
}
