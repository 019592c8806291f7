//! Exactly-once mode against the real broker: where processors start reading partitions whose
//! committed offsets are held by a transaction that a crashed processor left open.

mod common;

use common::TestApp;
use devcycle::app::{Deps, Mode};
use devcycle::domain::TaskRequest;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

/// A processor's offset lookup is refused as unstable while a crashed processor's transaction
/// (holding further offsets) is open; a second processor joining meanwhile changes the first
/// one's assignment. librdkafka 2.12, left to itself, then started the partitions at
/// `auto.offset.reset` (the beginning) and ran tasks the group had already done. Both processors
/// must start at the committed offsets once the broker aborts the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_held_by_an_open_transaction_start_at_their_committed_offsets() {
    let mut settings = common::test_settings();
    let tag = format!("eos-start-{}", settings.database.schema);
    settings.paths.processors = common::processors_with(&tag, &[("guarantee", "\"exactly_once\"".to_string())]);
    let deps = Deps::connect(settings.clone()).await.expect("services up");
    let topic = deps.catalog.topic_name("devcycle.task-requests");
    let group = deps.catalog.group_name("devcycle.agent-executor");

    let (partitions, per_partition, committed) = (6, 8, 4);
    let (mut done_before, mut to_do) = (Vec::new(), Vec::new());
    for p in 0..partitions {
        for i in 0..per_partition {
            let req = TaskRequest::new("echo", json!({"p": p, "i": i}));
            common::produce_request(&deps, &req, Some(p)).await;
            if i < committed { &mut done_before } else { &mut to_do }.push(req.task_id);
        }
    }
    let at = |offset: i64| {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Offset(offset)).unwrap();
        }
        tpl
    };
    // The group has done the first `committed` records of each partition.
    let committer: BaseConsumer = devcycle::kafka::client_config(&settings.kafka, "committer")
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    committer.commit(&at(committed), CommitMode::Sync).expect("offsets committed");
    // A processor crashed inside a transaction that holds further offsets: the broker aborts it
    // only after its timeout, and meanwhile answers offset lookups as unstable.
    let crashed: BaseProducer = devcycle::kafka::client_config(&settings.kafka, "crashed")
        .set("transactional.id", format!("{group}.crashed-{}", Uuid::new_v4()))
        .set("transaction.timeout.ms", "3000")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    tokio::task::block_in_place(|| {
        crashed.init_transactions(timeout).unwrap();
        crashed.begin_transaction().unwrap();
        let metadata = committer.group_metadata().expect("group metadata");
        crashed.send_offsets_to_transaction(&at(per_partition - 1), &metadata, timeout).unwrap();
    });

    let first = TestApp::start(deps.clone(), Mode::Process("agent-executor".into())).await;
    // The first processor's lookup is being refused when the second one joins.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = TestApp::start(deps.clone(), Mode::Process("agent-executor".into())).await;

    let results = first.read_results(&to_do, WAIT).await;
    assert_eq!(results.len(), to_do.len());
    // A partition read again from the beginning reaches its done records before the others.
    let ran: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE task_id = ANY($1)")
        .bind(&done_before)
        .fetch_one(&deps.pool)
        .await
        .unwrap();
    assert_eq!(ran, 0, "tasks before the committed offsets ran");
    second.stop().await;
    first.stop().await;
    drop(crashed);
}
