//! The checks themselves catch mistakes: broken copies of the shipped manifests are rejected,
//! and the PromQL scanner finds metric names only.

use super::compose::check_compose;
use super::dashboard::{check_dashboard_exprs, promql_metric_names, registered_metric_names};
use super::*;

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
    let mut broken = good.clone();
    remove(&mut broken, "spec.template.spec.shareProcessNamespace");
    let errors = check_deployment(&broken, &sources);
    assert!(errors.iter().any(|e| e.contains("shareProcessNamespace")), "no reaper: {errors:?}");

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
