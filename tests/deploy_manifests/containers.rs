//! Checks of one Kubernetes workload and its containers (probes, resources, environment,
//! arguments), shared by the manifest tests and the tests of the checks.

use super::*;

/// The container's argv: command then args.
pub(super) fn argv(container: &Value) -> Vec<String> {
    seq(container, "command").iter().chain(seq(container, "args")).filter_map(scalar).collect()
}

/// The parsed `devcycle` subcommand of an argv (which must start with the binary).
pub(super) fn subcommand(argv: &[String]) -> Result<Command, String> {
    match argv.first().map(String::as_str) {
        Some("devcycle") => Cli::try_parse_from(argv)
            .map(|c| c.command)
            .map_err(|e| format!("`{}` is not a devcycle command line: {e}", argv.join(" "))),
        _ => Err(format!("argv `{}` must start with `devcycle`", argv.join(" "))),
    }
}

/// The containerPort a probe/Service port (number or port name) refers to.
pub(super) fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
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
pub(super) fn processor_of(deployment: &Value) -> Option<String> {
    seq(deployment, "spec.template.spec.containers").iter().find_map(|c| match subcommand(&argv(c)) {
        Ok(Command::Process { name }) => Some(name),
        _ => None,
    })
}

pub(super) fn is_ingress(deployment: &Value) -> bool {
    seq(deployment, "spec.template.spec.containers")
        .iter()
        .any(|c| matches!(subcommand(&argv(c)), Ok(Command::Ingress)))
}

/// Everything checked on one Deployment (returns the problems found).
pub(super) fn check_deployment(doc: &Value, env_sources: &BTreeSet<String>) -> Vec<String> {
    let mut errors = Vec::new();
    let config = default_toml();
    let name = str_at(doc, "metadata.name").unwrap_or("?").to_string();
    let pod = at(doc, "spec.template.spec").expect("Deployment has spec.template.spec");
    let labels = string_map(at(doc, "spec.template.metadata.labels"));
    if !is_subset(&string_map(at(doc, "spec.selector.matchLabels")), &labels) {
        errors.push(format!("{name}: spec.selector does not match the pod template labels"));
    }
    check_pod_security(&name, pod, &mut errors);
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
                // Agents' orphaned children are reparented to PID 1; `devcycle` as PID 1 would
                // never reap them (zombies until the pod's PID limit). With the process
                // namespace shared, the pod's pause container is PID 1 and reaps them.
                if pod.get("shareProcessNamespace").and_then(Value::as_bool) != Some(true) {
                    errors.push(format!(
                        "{name}: a processor pod needs shareProcessNamespace: true (a PID 1 that reaps agents' orphans)"
                    ));
                }
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
        check_container_security(&format!("{name}/{cname}"), c, &config, env_sources, &mut errors);
    }
    errors
}

/// A pod runs as a non-root user.
fn check_pod_security(name: &str, pod: &Value, errors: &mut Vec<String>) {
    if at(pod, "securityContext.runAsNonRoot").and_then(Value::as_bool) != Some(true) {
        errors.push(format!("{name}: pod securityContext.runAsNonRoot must be true"));
    }
}

/// A container's root filesystem is read-only, it cannot escalate, and its environment names
/// known settings and defined ConfigMaps and Secrets.
fn check_container_security(
    at_name: &str,
    c: &Value,
    config: &toml::Table,
    env_sources: &BTreeSet<String>,
    errors: &mut Vec<String>,
) {
    if at(c, "securityContext.readOnlyRootFilesystem").and_then(Value::as_bool) != Some(true) {
        errors.push(format!("{at_name}: securityContext.readOnlyRootFilesystem must be true"));
    }
    if at(c, "securityContext.allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false) {
        errors.push(format!("{at_name}: securityContext.allowPrivilegeEscalation must be false"));
    }
    for e in seq(c, "env") {
        if let Err(msg) = check_env_name(config, str_at(e, "name").unwrap_or("")) {
            errors.push(format!("{at_name}: {msg}"));
        }
    }
    for source in seq(c, "envFrom") {
        for kind in ["configMapRef", "secretRef"] {
            if let Some(r) = str_at(source, &format!("{kind}.name")) {
                if !env_sources.contains(r) {
                    errors.push(format!("{at_name}: envFrom {kind} `{r}` is not defined"));
                }
            }
        }
    }
}

/// Everything checked on one CronJob: a `devcycle retention` command line, never two runs at
/// once, bounded resources, and the same pod and container hardening as the Deployments.
pub(super) fn check_cronjob(doc: &Value, env_sources: &BTreeSet<String>) -> Vec<String> {
    let mut errors = Vec::new();
    let config = default_toml();
    let name = str_at(doc, "metadata.name").unwrap_or("?").to_string();
    if str_at(doc, "spec.concurrencyPolicy") != Some("Forbid") {
        errors.push(format!("{name}: spec.concurrencyPolicy must be Forbid"));
    }
    let Some(pod) = at(doc, "spec.jobTemplate.spec.template.spec") else {
        return vec![format!("{name}: no spec.jobTemplate.spec.template.spec")];
    };
    check_pod_security(&name, pod, &mut errors);
    let containers = seq(pod, "containers");
    if containers.is_empty() {
        errors.push(format!("{name}: no containers"));
    }
    for c in containers {
        let at_name = format!("{name}/{}", str_at(c, "name").unwrap_or("?"));
        match subcommand(&argv(c)) {
            Ok(Command::Retention { .. }) => {}
            Ok(other) => errors.push(format!("{at_name}: a CronJob runs `retention`, not {other:?}")),
            Err(e) => errors.push(format!("{at_name}: {e}")),
        }
        for key in ["requests.memory", "requests.cpu", "limits.memory", "limits.cpu"] {
            if at(c, &format!("resources.{key}")).is_none() {
                errors.push(format!("{at_name}: no resources.{key}"));
            }
        }
        check_container_security(&at_name, c, &config, env_sources, &mut errors);
    }
    errors
}

/// The environment the ConfigMaps and Secrets of deploy/ give (Secret placeholders as is).
pub(super) fn manifest_env(docs: &[Doc]) -> BTreeMap<String, (String, String)> {
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
