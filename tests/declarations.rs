//! Topics and schemas as code, against the real broker and registry: `topics apply` and
//! `schemas apply` converge, are idempotent, and refuse what they must.

mod common;

use devcycle::catalog::Catalog;
use devcycle::registry::{self, RegistryError};
use devcycle::topics::{self, Change};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_apply_creates_raises_aligns_and_is_idempotent() {
    let settings = common::test_settings();
    let mut catalog = Catalog::load(&settings).unwrap();
    let ns = settings.kafka.namespace.clone();

    let first = topics::apply(&settings, &catalog).await.unwrap();
    let created: Vec<&Change> = first.iter().filter(|c| matches!(c, Change::Created { .. })).collect();
    assert_eq!(created.len(), catalog.topics.len(), "{first:?}");
    assert!(first.contains(&Change::Created { topic: format!("{ns}devcycle.task-requests"), partitions: 6 }));

    let second = topics::apply(&settings, &catalog).await.unwrap();
    assert!(second.is_empty(), "second run changed something: {second:?}");

    // Raise partitions and change retention in the declaration.
    let decl = catalog.topics.get_mut("devcycle.task-requests").unwrap();
    decl.partitions = 8;
    decl.retention_ms = 3_600_000;
    let third = topics::apply(&settings, &catalog).await.unwrap();
    let topic = format!("{ns}devcycle.task-requests");
    assert!(third.contains(&Change::PartitionsRaised { topic: topic.clone(), from: 6, to: 8 }), "{third:?}");
    assert!(
        third
            .iter()
            .any(|c| matches!(c, Change::ConfigAligned { key, to, .. } if key == "retention.ms" && to == "3600000")),
        "{third:?}"
    );
    assert!(topics::apply(&settings, &catalog).await.unwrap().is_empty());

    // Lowering is impossible in Kafka: reported, not attempted.
    catalog.topics.get_mut("devcycle.task-requests").unwrap().partitions = 2;
    let fourth = topics::apply(&settings, &catalog).await.unwrap();
    assert!(fourth.iter().all(|c| !c.is_change()) && fourth.len() == 1, "{fourth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_apply_registers_once_and_refuses_incompatible_changes() {
    let settings = common::test_settings();
    let mut catalog = Catalog::load(&settings).unwrap();

    let first = registry::apply_all(&settings, &catalog).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|r| r.new_version), "{first:?}");
    let second = registry::apply_all(&settings, &catalog).await.unwrap();
    assert!(second.iter().all(|r| !r.new_version), "{second:?}");
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), second.iter().map(|r| r.id).collect::<Vec<_>>());

    // A new optional field with a default is a BACKWARD-compatible evolution.
    let original = catalog.schemas["TaskRequest"].clone();
    let evolved = original.replacen(
        r#"{"name": "agent""#,
        r#"{"name": "labels", "type": {"type": "map", "values": "string"}, "default": {}, "doc": "Free-form labels."},
    {"name": "agent""#,
        1,
    );
    assert_ne!(evolved, original);
    catalog.schemas.insert("TaskRequest".into(), evolved.clone());
    let third = registry::apply_all(&settings, &catalog).await.unwrap();
    assert!(third.iter().any(|r| r.new_version && r.subject.ends_with("task-requests-value")), "{third:?}");

    // A new required field (no default) cannot read old records: refused, with the reason.
    let breaking = evolved.replacen(
        r#"{"name": "agent""#,
        r#"{"name": "tenant", "type": "string", "doc": "Required, no default."},
    {"name": "agent""#,
        1,
    );
    catalog.schemas.insert("TaskRequest".into(), breaking);
    let err = registry::apply_all(&settings, &catalog).await.unwrap_err();
    match &err {
        RegistryError::Incompatible { subject, .. } => assert!(subject.ends_with("task-requests-value")),
        other => panic!("expected Incompatible, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("not BACKWARD compatible") && msg.contains("TaskRequest"), "{msg}");
    eprintln!("refusal as reported: {msg}");
}
