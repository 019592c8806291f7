//! The runner against librdkafka's mock cluster (no real broker): a consumer that cannot settle
//! in its group makes the runner exit with a stall once the window is over; a settled, idle
//! consumer keeps running however long nothing arrives; a handler that panics has its record
//! dead-lettered; a runner that ends while it holds a revoke still closes its consumer; an
//! exactly-once runner that cannot read where its partitions start exits instead of reading them.

use super::watchdog::Stall;
use super::{DecodeError, ProcessError, Processor, RecordMeta, RunnerConfig, RunnerError, RunnerHealth};
use crate::catalog::ProcessorSpec;
use crate::settings::{KafkaSettings, Settings};
use async_trait::async_trait;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Counts the records it takes.
#[derive(Default)]
struct Counting(AtomicUsize);

#[async_trait]
impl Processor for Counting {
    type Input = ();
    async fn decode(&self, _: Option<&[u8]>) -> Result<(), DecodeError> {
        Ok(())
    }
    async fn process(&self, _: &(), _: &RecordMeta) -> Result<(), ProcessError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub(super) const TOPIC: &str = "stall-requests";

fn mock() -> MockCluster<'static, DefaultProducerContext> {
    mock_with(1)
}

pub(super) fn mock_with(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, partitions, 1).expect("mock topic");
    mock
}

pub(super) fn kafka(mock: &MockCluster<'static, DefaultProducerContext>) -> KafkaSettings {
    KafkaSettings { session_timeout_ms: 6000, ..Settings::test_kafka(mock.bootstrap_servers()) }
}

/// Waits (polling) until `done`, failing the test with `what` after `within`.
pub(super) async fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a processor that takes (and counts) every record for at most `run`, with a stall window
/// of `window`.
async fn run(
    kafka: &KafkaSettings,
    window: Duration,
    run: Duration,
    health: Arc<RunnerHealth>,
) -> Result<(), RunnerError> {
    run_processor(kafka, window, run, health, Arc::new(Counting::default())).await
}

/// Runs `processor` for at most `run`, with a stall window of `window`.
async fn run_processor<P: Processor>(
    kafka: &KafkaSettings,
    window: Duration,
    run: Duration,
    health: Arc<RunnerHealth>,
    processor: Arc<P>,
) -> Result<(), RunnerError> {
    run_in_group(kafka, &format!("stall-{}", uuid::Uuid::new_v4()), window, run, health, processor).await
}

pub(super) async fn run_in_group<P: Processor>(
    kafka: &KafkaSettings,
    group: &str,
    window: Duration,
    run: Duration,
    health: Arc<RunnerHealth>,
    processor: Arc<P>,
) -> Result<(), RunnerError> {
    run_spec(kafka, group, shipped_spec(), window, run, health, processor).await
}

fn shipped_spec() -> ProcessorSpec {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/processors/agent-executor.toml")).unwrap();
    toml::from_str(&text).expect("shipped processor spec")
}

async fn run_spec<P: Processor>(
    kafka: &KafkaSettings,
    group: &str,
    spec: ProcessorSpec,
    window: Duration,
    run: Duration,
    health: Arc<RunnerHealth>,
    processor: Arc<P>,
) -> Result<(), RunnerError> {
    let config = RunnerConfig {
        spec,
        input_topic: TOPIC.into(),
        group: group.to_string(),
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
    super::run_processor(kafka, config, producer, processor, health, shutdown).await
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

/// Panics on the record `boom`, takes any other.
struct Panicky;

#[async_trait]
impl Processor for Panicky {
    type Input = Vec<u8>;
    async fn decode(&self, payload: Option<&[u8]>) -> Result<Vec<u8>, DecodeError> {
        Ok(payload.unwrap_or_default().to_vec())
    }
    async fn process(&self, input: &Vec<u8>, _: &RecordMeta) -> Result<(), ProcessError> {
        assert_ne!(input.as_slice(), b"boom", "a handler bug");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_handler_panics_is_dead_lettered_and_its_partition_goes_on() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mock = mock();
    mock.create_topic("stall-dead-letters", 1, 1).expect("mock dead-letter topic");
    let kafka = kafka(&mock);
    let producer: FutureProducer = crate::kafka::client_config(&kafka, "panic-test").create().unwrap();
    for value in ["boom", "ok"] {
        producer.send(FutureRecord::<str, str>::to(TOPIC).payload(value), Duration::from_secs(5)).await.unwrap();
    }
    let health = Arc::new(RunnerHealth::default());
    // The mock coordinator holds the first join for 3 s.
    let result =
        run_processor(&kafka, Duration::from_secs(30), Duration::from_secs(8), health.clone(), Arc::new(Panicky)).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(health.in_flight.load(Ordering::SeqCst), 0, "a worker never reported back");

    let reader: BaseConsumer = crate::kafka::reader_config(&kafka, "panic-letters").create().unwrap();
    reader.subscribe(&["stall-dead-letters"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let letter = loop {
        assert!(std::time::Instant::now() < deadline, "no dead letter for the record whose handler panicked");
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            break m.detach();
        }
    };
    assert_eq!(letter.payload(), Some(b"boom".as_slice()));
    let headers = letter.headers().expect("dead-letter headers");
    let class = headers.iter().find(|h| h.key == super::dlq::H_CLASS).and_then(|h| h.value).unwrap();
    assert_eq!(class, b"panic");
}

/// Takes a minute per record.
struct Slow;

#[async_trait]
impl Processor for Slow {
    type Input = ();
    async fn decode(&self, _: Option<&[u8]>) -> Result<(), DecodeError> {
        Ok(())
    }
    async fn process(&self, _: &(), _: &RecordMeta) -> Result<(), ProcessError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

/// A runner that ends (here: its task is aborted) while it holds a revoke for a running record
/// hands the partition over as its consumer closes; otherwise librdkafka's close waits for ever
/// for the unassign call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_dropped_while_it_holds_a_revoke_still_closes_its_consumer() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mock = mock_with(2);
    let kafka = kafka(&mock);
    let producer: FutureProducer = crate::kafka::client_config(&kafka, "revoke-test").create().unwrap();
    for partition in 0..2 {
        let record = FutureRecord::<str, str>::to(TOPIC).payload("slow").partition(partition);
        producer.send(record, Duration::from_secs(5)).await.unwrap();
    }
    let group = format!("revoke-{}", uuid::Uuid::new_v4());
    let health = Arc::new(RunnerHealth::default());
    let runner = {
        let (kafka, group, health) = (kafka.clone(), group.clone(), health.clone());
        let (window, run) = (Duration::from_secs(60), Duration::from_secs(120));
        tokio::spawn(async move { run_in_group(&kafka, &group, window, run, health, Arc::new(Slow)).await })
    };
    let within = Duration::from_secs(30);
    wait_for("both records running", within, || health.in_flight.load(Ordering::SeqCst) == 2).await;
    // A second member joins: the runner is asked to give up one partition, whose record runs.
    let joining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let member = {
        let config = crate::kafka::client_config(&kafka, "revoke-member")
            .set("group.id", &group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "6000")
            .clone();
        let joining = joining.clone();
        std::thread::spawn(move || {
            let c: BaseConsumer = config.create().unwrap();
            c.subscribe(&[TOPIC]).unwrap();
            while joining.load(Ordering::SeqCst) {
                let _ = c.poll(Duration::from_millis(100));
            }
        })
    };
    wait_for("a revoke held", within, || health.revoking.load(Ordering::SeqCst) == 1).await;
    runner.abort();
    let ended = tokio::time::timeout(Duration::from_secs(20), runner).await;
    joining.store(false, Ordering::SeqCst);
    member.join().unwrap();
    assert!(ended.is_ok_and(|r| r.is_err_and(|e| e.is_cancelled())), "the runner's consumer never closed");
}

/// Records waiting to start are bounded by their bytes too: with room for 1,000 records but
/// 30 KB, 10 KB records stop being fetched after a few (the partitions pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_is_bounded_by_the_bytes_of_the_records_waiting() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mock = mock();
    let kafka = kafka(&mock);
    let producer: FutureProducer = crate::kafka::client_config(&kafka, "bytes-test").create().unwrap();
    let value = vec![b'x'; 10_000];
    for _ in 0..50 {
        producer.send(FutureRecord::<str, [u8]>::to(TOPIC).payload(&value), Duration::from_secs(5)).await.unwrap();
    }
    let mut spec = shipped_spec();
    (spec.concurrency, spec.max_buffered, spec.max_buffered_bytes) = (1, 1000, 30_000);
    let health = Arc::new(RunnerHealth::default());
    let runner = {
        let (kafka, health) = (kafka.clone(), health.clone());
        let group = format!("bytes-{}", uuid::Uuid::new_v4());
        let (window, run) = (Duration::from_secs(60), Duration::from_secs(120));
        tokio::spawn(async move { run_spec(&kafka, &group, spec, window, run, health, Arc::new(Slow)).await })
    };
    // The mock coordinator holds the first join for 3 s; then the records arrive at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while health.in_flight.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no record started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(health.held.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    runner.abort();
    // One running, three waiting (30 KB), and what arrived while the pause took effect.
    assert!((2..=10).contains(&most), "held {most} records of 10 KB with max_buffered_bytes = 30 KB");
}

/// A stalled runner returns even when its consumer cannot close. Every answer of the mock
/// broker comes two minutes late from some point on: the group session is lost, the runner
/// stalls, and the consumer's close (committing the stored offsets, leaving the group) waits for
/// answers that do not come. Without a bound on that wait the process never exits for its
/// restart (seen after broker restarts, in tests/faults.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_runner_returns_even_when_its_consumer_cannot_close() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mock = mock();
    let kafka = kafka(&mock);
    let producer: FutureProducer = crate::kafka::client_config(&kafka, "close-test").create().unwrap();
    for _ in 0..3 {
        producer.send(FutureRecord::<str, str>::to(TOPIC).payload("x"), Duration::from_secs(5)).await.unwrap();
    }
    let health = Arc::new(RunnerHealth::default());
    let window = Duration::from_secs(8);
    let runner = {
        let (kafka, health) = (kafka.clone(), health.clone());
        tokio::spawn(async move { run(&kafka, window, Duration::from_secs(300), health).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while health.assigned.load(Ordering::SeqCst) == 0 || health.held.load(Ordering::SeqCst) > 0 {
        assert!(std::time::Instant::now() < deadline, "the runner never took its partition's records");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The records' offsets are stored; their commit and everything after it go unanswered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    mock.broker_round_trip_time(1, Duration::from_secs(120)).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(60), runner).await;
    let result = ended.expect("the runner returned (its consumer's close is bounded)").expect("no panic");
    assert!(matches!(result, Err(RunnerError::Stalled { .. })), "{result:?}");
}

/// Exactly-once: when the committed offsets of an assignment cannot be read for the whole
/// lookup window, the runner exits for a restart rather than leave the partitions to
/// librdkafka's own lookup (which could start them from `auto.offset.reset`, replaying committed
/// results). The exit is what this test guards: as every lookup is refused here, librdkafka
/// could not have started the partition either, so the count of records read cannot show the
/// pause on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_exits_rather_than_guess_where_a_partition_starts() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mock = mock();
    let kafka = kafka(&mock);
    let producer: FutureProducer = crate::kafka::client_config(&kafka, "start-test").create().unwrap();
    producer.send(FutureRecord::<str, str>::to(TOPIC).payload("x"), Duration::from_secs(5)).await.unwrap();
    // Every committed-offset lookup fails.
    mock.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 10_000],
    );
    let mut spec = shipped_spec();
    spec.guarantee = crate::catalog::Guarantee::ExactlyOnce;
    let counting = Arc::new(Counting::default());
    let health = Arc::new(RunnerHealth::default());
    let window = Duration::from_secs(8);
    let group = format!("start-{}", uuid::Uuid::new_v4());
    let started = std::time::Instant::now();
    // The mock coordinator holds the first join for 3 s; the lookup then gets half the window.
    let result = run_spec(&kafka, &group, spec, window, Duration::from_secs(40), health, counting.clone()).await;
    match result {
        Err(RunnerError::Stalled { stall: Stall::StartOffsetsUnknown { partitions, within }, .. }) => {
            assert_eq!((partitions, within), (1, window / 2));
        }
        other => panic!("expected an exit for unknown start offsets, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30), "exited after {:?}", started.elapsed());
    assert_eq!(counting.0.load(Ordering::SeqCst), 0, "a record was read from a guessed position");
}
