//! Kubernetes manifests under `deploy/`: kustomizations, Deployments (through the container
//! checks), the ConfigMap and Secret, Services, autoscalers, budgets and KEDA ScaledObjects.

use super::*;

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

/// The ConfigMaps and Secrets that workloads may take their environment from.
fn env_sources(docs: &[Doc]) -> BTreeSet<String> {
    docs.iter().filter(|d| matches!(d.kind(), "ConfigMap" | "Secret")).map(|d| d.name().to_string()).collect()
}

#[test]
fn deployments_follow_spec_and_declarations() {
    let docs = deploy_docs();
    let env_sources = env_sources(&docs);
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
fn the_retention_cron_job_is_a_hardened_devcycle_command() {
    let docs = deploy_docs();
    let env_sources = env_sources(&docs);
    let jobs: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "CronJob").collect();
    let mut errors: Vec<String> = jobs.iter().flat_map(|d| check_cronjob(&d.value, &env_sources)).collect();
    if jobs.is_empty() {
        errors.push("no CronJob runs `devcycle retention apply`".into());
    }
    assert_no_errors("CronJobs", &errors);
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
        "DATA_ENCRYPTION_KEY",
    ] {
        if !env.contains_key(required) {
            errors.push(format!("no ConfigMap or Secret sets {required}"));
        }
    }
    assert_no_errors("ConfigMap/Secret", &errors);

    // With a real secret in place of the placeholder, the values load as production settings.
    let mut vars: BTreeMap<String, String> = env.into_iter().map(|(k, (v, _))| (k, v)).collect();
    with_real_secrets(&mut vars);
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
    with_real_secrets(&mut vars);
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

/// The Secret's placeholders replaced by values production accepts.
fn with_real_secrets(vars: &mut BTreeMap<String, String>) {
    vars.insert("SECRET_KEY".into(), "a-test-secret-that-is-long-enough-0123456789".into());
    vars.insert("DATA_ENCRYPTION_KEY".into(), "7465".repeat(16));
}
