//! The runner against librdkafka's mock cluster (no real broker): a consumer that cannot settle
//! in its group makes the runner exit with a stall once the window is over; a settled, idle
//! consumer keeps running however long nothing arrives.

use super::watchdog::Stall;
use super::{DecodeError, ProcessError, Processor, RecordMeta, RunnerConfig, RunnerError, RunnerHealth};
use crate::catalog::ProcessorSpec;
use crate::settings::{KafkaSettings, Settings};
use async_trait::async_trait;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Idle;

#[async_trait]
impl Processor for Idle {
    type Input = ();
    async fn decode(&self, _: Option<&[u8]>) -> Result<(), DecodeError> {
        Ok(())
    }
    async fn process(&self, _: &(), _: &RecordMeta) -> Result<(), ProcessError> {
        Ok(())
    }
}

const TOPIC: &str = "stall-requests";

fn mock() -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, 1, 1).expect("mock topic");
    mock
}

fn kafka(mock: &MockCluster<'static, DefaultProducerContext>) -> KafkaSettings {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let env = [("ENVIRONMENT".to_string(), "test".to_string())].into_iter().collect();
    let mut kafka = Settings::load_with_env(&dir, &env).expect("settings").kafka;
    kafka.bootstrap_servers = mock.bootstrap_servers();
    kafka.session_timeout_ms = 6000;
    kafka
}

/// Runs the idle processor for at most `run`, with a stall window of `window`.
async fn run(
    kafka: &KafkaSettings,
    window: Duration,
    run: Duration,
    health: Arc<RunnerHealth>,
) -> Result<(), RunnerError> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/processors/agent-executor.toml")).unwrap();
    let spec: ProcessorSpec = toml::from_str(&text).expect("shipped processor spec");
    let config = RunnerConfig {
        spec,
        input_topic: TOPIC.into(),
        group: format!("stall-{}", uuid::Uuid::new_v4()),
        dead_letter_topic: "stall-dead-letters".into(),
        stall_after: window,
    };
    let producer = crate::kafka::Producer::new(kafka, "stall-test", Duration::from_secs(5)).expect("producer");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(run).await;
        stop.cancel();
    });
    super::run_processor(kafka, config, producer, Arc::new(Idle), health, shutdown).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_settles_in_its_group_exits_as_stalled() {
    let mock = mock();
    // Every coordinator lookup fails: the consumer can never join its group.
    mock.request_errors(
        RDKafkaApiKey::FindCoordinator,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 10_000],
    );
    let window = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let health = Arc::new(RunnerHealth::default());
    let result = run(&kafka(&mock), window, Duration::from_secs(30), health.clone()).await;
    match result {
        Err(RunnerError::Stalled { stall: Stall::GroupNotJoined { state, .. }, after }) => {
            assert_eq!(after, window);
            assert_ne!(state, "up", "the group never came up");
        }
        other => panic!("expected a group stall, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took > window && took < Duration::from_secs(15), "stalled after {took:?}");
    assert_eq!(health.assigned.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_idle_consumer_outlives_many_windows() {
    let mock = mock();
    let health = Arc::new(RunnerHealth::default());
    // The mock coordinator holds the first join for 3 s (group.initial.rebalance.delay.ms).
    let result = run(&kafka(&mock), Duration::from_secs(5), Duration::from_secs(16), health.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(health.assigned.load(Ordering::SeqCst), 1, "it had joined and held the partition");
}
