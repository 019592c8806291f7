//! How handlers publish their output records: straight to Kafka (at-least-once: `publish`
//! returns after the broker's ack), or into the record's transaction buffer (exactly-once: the
//! runner produces the buffer and commits the record's offset in one Kafka transaction).

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
                buffer.lock().expect("lock").push(Output {
                    topic: rec.topic.to_string(),
                    key: rec.key.map(<[u8]>::to_vec),
                    value: rec.value.map(<[u8]>::to_vec),
                    headers: rec.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
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
