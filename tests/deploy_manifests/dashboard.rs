//! The Grafana dashboard only queries `devcycle_*` metrics registered in `src/events/mod.rs`.

use super::*;

// Tests: Grafana dashboard

/// The metric names a PromQL expression selects (not functions, labels, keywords or numbers).
pub(super) fn promql_metric_names(expr: &str) -> Vec<String> {
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
pub(super) fn registered_metric_names() -> BTreeSet<String> {
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

pub(super) fn check_dashboard_exprs(exprs: &[String], registered: &BTreeSet<String>) -> Vec<String> {
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
