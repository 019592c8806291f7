//! The runner against librdkafka's mock cluster when its partitions are lost (the coordinator
//! no longer knows the member, as after a session expiry): the records still running there are
//! cancelled at once, not left running beside the partition's next owner, and the partition is
//! read again from its last commit once the member rejoins.

use super::stall_tests::{kafka, mock_with, run_in_group, wait_for, TOPIC};
use super::{DecodeError, ProcessError, Processor, RecordMeta, RunnerHealth};
use async_trait::async_trait;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Takes a minute per record; counts its starts, and its ends before that minute (drops).
#[derive(Default)]
struct Minute {
    started: AtomicUsize,
    dropped: Arc<AtomicUsize>,
}

struct CountsDrop(Arc<AtomicUsize>);

impl Drop for CountsDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Processor for Minute {
    type Input = ();
    async fn decode(&self, _: Option<&[u8]>) -> Result<(), DecodeError> {
        Ok(())
    }
    async fn process(&self, _: &(), _: &RecordMeta) -> Result<(), ProcessError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let dropped = CountsDrop(self.dropped.clone());
        tokio::time::sleep(Duration::from_secs(60)).await;
        std::mem::forget(dropped);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_running_on_a_lost_partition_is_cancelled_and_read_again_after_the_rejoin() {
    let mock = mock_with(1);
    let kafka = kafka(&mock);
    let producer: FutureProducer = crate::kafka::client_config(&kafka, "lost-test").create().unwrap();
    producer.send(FutureRecord::<str, str>::to(TOPIC).payload("slow"), Duration::from_secs(5)).await.unwrap();
    let minute = Arc::new(Minute::default());
    let health = Arc::new(RunnerHealth::default());
    let runner = {
        let (kafka, health, minute) = (kafka.clone(), health.clone(), minute.clone());
        let group = format!("lost-{}", uuid::Uuid::new_v4());
        let (window, run) = (Duration::from_secs(60), Duration::from_secs(50));
        tokio::spawn(async move { run_in_group(&kafka, &group, window, run, health, minute).await })
    };
    // The mock coordinator holds the first join for 3 s.
    wait_for("the record running", Duration::from_secs(20), || minute.started.load(Ordering::SeqCst) == 1).await;
    assert_eq!(minute.dropped.load(Ordering::SeqCst), 0);

    // The coordinator answers the next heartbeat as if the session had expired: librdkafka
    // revokes the assignment as lost and rejoins under a new member id.
    mock.request_errors(RDKafkaApiKey::Heartbeat, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID]);
    wait_for("the running record cancelled", Duration::from_secs(15), || minute.dropped.load(Ordering::SeqCst) == 1)
        .await;
    assert!(health.in_flight.load(Ordering::SeqCst) <= 1);

    // Nothing was committed for it: after the rejoin the record is read and started again, and
    // the cancelled run is not counted as done.
    wait_for("the record started again", Duration::from_secs(20), || minute.started.load(Ordering::SeqCst) == 2).await;
    assert_eq!(minute.dropped.load(Ordering::SeqCst), 1, "only the run on the lost assignment was cancelled");
    assert_eq!(health.in_flight.load(Ordering::SeqCst), 1, "one run of the record, the new one");
    runner.abort();
    let _ = runner.await;
}
