//! How handlers publish their output records: straight to Kafka (at-least-once: `publish`
//! returns after the broker's ack), or into the record's transaction buffer (exactly-once: the
//! runner produces the buffer and commits the record's offset in one Kafka transaction).
//!
//! Invariant (exactly-once): a record's transaction holds each output once. An attempt that
//! failed after publishing (e.g. Redis unavailable after the result was held) is run again and
//! publishes the same records again; the copies are not held twice.

use crate::kafka::{OutRecord, ProduceError, Producer};
use std::sync::{Arc, Mutex};

/// An output record held for a transaction.
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Clone)]
pub enum Publisher {
    Direct(Producer),
    Transactional(Arc<Mutex<Vec<Output>>>),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Publisher::Direct(_) => f.write_str("Publisher::Direct"),
            Publisher::Transactional(b) => {
                write!(f, "Publisher::Transactional({} held)", b.lock().expect("lock").len())
            }
        }
    }
}

impl Publisher {
    /// Publishes one record: acknowledged (direct) or held for the record's transaction.
    pub async fn publish(&self, rec: OutRecord<'_>) -> Result<(), ProduceError> {
        match self {
            Publisher::Direct(p) => p.send(rec).await.map(|_| ()),
            Publisher::Transactional(buffer) => {
                let mut held = buffer.lock().expect("lock");
                let same =
                    |o: &Output| o.topic == rec.topic && o.key.as_deref() == rec.key && o.value.as_deref() == rec.value;
                if held.iter().any(same) {
                    return Ok(());
                }
                held.push(Output {
                    topic: rec.topic.to_string(),
                    key: rec.key.map(<[u8]>::to_vec),
                    value: rec.value.map(<[u8]>::to_vec),
                    headers: rec.headers.into_iter().map(|(k, v)| (k.to_string(), v.into_owned())).collect(),
                });
                Ok(())
            }
        }
    }

    /// Publishes records in this order (per partition, as Kafka keeps it): all are handed to
    /// the idempotent producer at once, which keeps their order, and acknowledged together.
    /// Should its queue be full, the rest go one by one after the ones already queued.
    pub async fn publish_in_order(&self, recs: Vec<OutRecord<'_>>) -> Result<(), ProduceError> {
        let Publisher::Direct(p) = self else {
            for rec in recs {
                self.publish(rec).await?;
            }
            return Ok(());
        };
        let mut queued = Vec::with_capacity(recs.len());
        let mut recs = recs.into_iter();
        for rec in recs.by_ref() {
            match p.enqueue(&rec, None) {
                Ok(pending) => queued.push(pending),
                Err(_) => {
                    futures::future::try_join_all(queued).await?;
                    for rec in std::iter::once(rec).chain(recs) {
                        p.send(rec).await?;
                    }
                    return Ok(());
                }
            }
        }
        futures::future::try_join_all(queued).await?;
        Ok(())
    }

    /// The held outputs (exactly-once), taken once the record is done.
    pub fn take(&self) -> Vec<Output> {
        match self {
            Publisher::Direct(_) => Vec::new(),
            Publisher::Transactional(b) => std::mem::take(&mut *b.lock().expect("lock")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(topic: &'a str, value: &'a [u8]) -> OutRecord<'a> {
        OutRecord { topic, key: Some(b"k"), value: Some(value), headers: vec![], partition: None }
    }

    #[tokio::test]
    async fn a_transaction_holds_each_output_once() {
        let p = Publisher::Transactional(Arc::default());
        p.publish(rec("results", b"r")).await.unwrap();
        p.publish(rec("events", b"e1")).await.unwrap();
        // The same records again (a retried attempt), and one that differs.
        p.publish(rec("results", b"r")).await.unwrap();
        p.publish_in_order(vec![rec("events", b"e1"), rec("events", b"e2")]).await.unwrap();
        let held: Vec<(String, Vec<u8>)> = p.take().into_iter().map(|o| (o.topic, o.value.unwrap())).collect();
        let want = [("results", b"r".as_slice()), ("events", b"e1"), ("events", b"e2")];
        assert_eq!(held, want.map(|(t, v)| (t.to_string(), v.to_vec())));
    }
}
