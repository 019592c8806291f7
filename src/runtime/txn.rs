//! Exactly-once mode: a transactional producer that publishes the outputs of finished records
//! and commits their offsets in one Kafka transaction.
//!
//! Invariants: an output is committed only together with the offset that covers its record
//! (outputs of records past the contiguous watermark wait for a later transaction), so a
//! read_committed consumer sees each output once and never an aborted one; on an abortable
//! error the transaction is aborted and retried with the same outputs; a retriable error of
//! sending the offsets or committing is answered with the same call again, as librdkafka
//! expects (it keeps that operation in progress, and refuses any other meanwhile), a bounded
//! number of times; a fatal error (fenced) stops the processor, and commits failing for a whole
//! stall window restart it (see `watchdog`).

use super::assignment::{Assignment, Assignments};
use super::publish::Output;
use crate::kafka::{client_config, future_record, OutRecord};
use crate::settings::KafkaSettings;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

type Tp = (String, i32);

/// How many more times a retriable transactional step is called before the transaction is
/// given up (each call waits up to `kafka.request_timeout_ms`).
const STEP_RETRIES: u32 = 3;

/// Runs `step` again while it fails with an error `retriable` accepts, at most `retries` more
/// times; its last result.
fn retrying<T, E>(
    retries: u32,
    retriable: impl Fn(&E) -> bool,
    mut step: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut left = retries;
    loop {
        match step() {
            Err(e) if left > 0 && retriable(&e) => left -= 1,
            other => return other,
        }
    }
}

/// A transactional error that librdkafka wants answered with the same call again.
fn retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable() && !t.txn_requires_abort() && !t.is_fatal())
}

pub struct Transactions {
    producer: FutureProducer,
    /// Outputs of finished records by partition and offset, not yet committed.
    held: HashMap<Tp, BTreeMap<i64, Vec<Output>>>,
    /// Last committed position per partition.
    committed: HashMap<Tp, i64>,
    timeout: Duration,
}

impl Transactions {
    pub fn new(kafka: &KafkaSettings, name: &str, group: &str) -> Result<Transactions, KafkaError> {
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let producer: FutureProducer = client_config(kafka, &format!("{name}-txn"))
            .set("transactional.id", format!("{group}.{}", uuid::Uuid::new_v4()))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // A crashed producer's open transaction blocks read_committed readers, and the
            // committed offsets of its partitions, until it times out: keep that short (a
            // transaction lives ~100 ms here). New owners wait for those offsets (see `start`).
            .set("transaction.timeout.ms", "5000")
            .create()?;
        tokio::task::block_in_place(|| producer.init_transactions(timeout))?;
        Ok(Transactions { producer, held: HashMap::new(), committed: HashMap::new(), timeout })
    }

    /// Holds the outputs of a finished record.
    pub fn hold(&mut self, tp: Tp, offset: i64, outputs: Vec<Output>) {
        self.held.entry(tp).or_default().insert(offset, outputs);
    }

    /// Forgets revoked partitions: their records are redelivered to the new owner.
    pub fn forget(&mut self, tp: &Tp) {
        self.held.remove(tp);
        self.committed.remove(tp);
    }

    /// Commits the outputs and offsets of every partition whose watermark advanced.
    pub async fn commit<C: ConsumerContext + 'static>(
        &mut self,
        consumer: &StreamConsumer<C>,
        offsets: &Assignments,
    ) -> Result<usize, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        let mut batch: Vec<(Tp, i64)> = Vec::new();
        for (tp, Assignment { tracker, .. }) in offsets {
            let Some(position) = tracker.position() else { continue };
            if self.committed.get(tp).is_some_and(|c| *c >= position) {
                continue;
            }
            if tracker.stored() != Some(position) {
                // Nothing finished yet on this partition since the assignment.
                continue;
            }
            tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(position))?;
            batch.push((tp.clone(), position));
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let Some(cgm) = consumer.group_metadata() else { return Ok(0) };
        let mut outputs: Vec<Output> = Vec::new();
        for (tp, position) in &batch {
            if let Some(held) = self.held.get(tp) {
                outputs.extend(held.range(..position).flat_map(|(_, o)| o.iter().cloned()));
            }
        }
        let count = outputs.len();
        match self.run(&outputs, &tpl, &cgm).await {
            Ok(()) => {
                for (tp, position) in batch {
                    if let Some(held) = self.held.get_mut(&tp) {
                        *held = held.split_off(&position);
                    }
                    self.committed.insert(tp, position);
                }
                Ok(count)
            }
            Err(e) => {
                let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
                if !fatal {
                    let _ = tokio::task::block_in_place(|| self.producer.abort_transaction(self.timeout));
                }
                Err(e)
            }
        }
    }

    async fn run(
        &self,
        outputs: &[Output],
        tpl: &TopicPartitionList,
        cgm: &rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        self.producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(outputs.len());
        for o in outputs {
            let rec = OutRecord {
                topic: &o.topic,
                key: o.key.as_deref(),
                value: o.value.as_deref(),
                headers: o.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice().into())).collect(),
                partition: None,
            };
            deliveries.push(self.producer.send_result(future_record(&rec)).map_err(|(e, _)| e)?);
        }
        tokio::task::block_in_place(|| {
            retrying(STEP_RETRIES, retriable, || self.producer.send_offsets_to_transaction(tpl, cgm, self.timeout))?;
            retrying(STEP_RETRIES, retriable, || self.producer.commit_transaction(self.timeout))
        })?;
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::retrying;

    #[test]
    fn a_retriable_step_is_called_again_a_bounded_number_of_times() {
        /// The error each call gives, the call that succeeds (if any), the result and the calls.
        type Case = (&'static str, Option<u32>, Result<u32, &'static str>, u32);
        let cases: [Case; 3] = [
            ("retriable", Some(3), Ok(3), 3),
            ("retriable", None, Err("retriable"), 4),
            ("abort", None, Err("abort"), 1),
        ];
        for (error, ok_at, want, want_calls) in cases {
            let mut calls = 0u32;
            let got = retrying(
                3,
                |e: &&str| *e == "retriable",
                || {
                    calls += 1;
                    if ok_at.is_some_and(|n| calls >= n) {
                        Ok(calls)
                    } else {
                        Err(error)
                    }
                },
            );
            assert_eq!((got, calls), (want, want_calls), "{error}");
        }
    }
}
