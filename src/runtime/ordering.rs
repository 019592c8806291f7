//! Which records of a partition must run one after another (the processor file's `ordering`):
//! the key the runner's scheduler serialises on. Records with the same key run in offset order;
//! a record without one runs as soon as a slot is free.

use crate::catalog::Ordering;
use rdkafka::message::{Message, OwnedMessage};

/// The scheduling key of a record under `ordering` (`None`: no order asked).
pub(super) fn ordering_key(ordering: Ordering, m: &OwnedMessage) -> Option<Vec<u8>> {
    match ordering {
        Ordering::Unordered => None,
        Ordering::Partition => Some(format!("{}:{}", m.topic(), m.partition()).into_bytes()),
        // A record without a key asks for no order (Kafka spreads such records freely).
        Ordering::Key => m.key().map(|key| {
            let mut k = format!("{}:{}:", m.topic(), m.partition()).into_bytes();
            k.extend_from_slice(key);
            k
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    fn msg(partition: i32, key: Option<&[u8]>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"v".to_vec()),
            key.map(<[u8]>::to_vec),
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            0,
            None,
        )
    }

    #[test]
    fn ordering_keys() {
        assert_eq!(ordering_key(Ordering::Unordered, &msg(0, Some(b"a"))), None);
        assert_eq!(ordering_key(Ordering::Partition, &msg(3, None)), Some(b"t:3".to_vec()));
        assert_eq!(ordering_key(Ordering::Key, &msg(3, Some(b"a"))), Some(b"t:3:a".to_vec()));
        // Without a key a record is not ordered against others (it was serialized with every
        // other keyless record of its partition before).
        assert_eq!(ordering_key(Ordering::Key, &msg(3, None)), None);
    }
}
