//! `docker-compose.yml`: ports, healthchecks, environment and commands against the config and
//! the declarations.

use super::*;

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

pub(super) fn check_compose(compose: &Value) -> Vec<String> {
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
