//! The ingress's producer watchdog: when every record has failed to reach Kafka for a whole
//! window while a new client reaches the cluster at once, the producer is wedged (seen after a
//! broker restart: a producer timing out every record while other clients work again) and
//! the process exits so that its supervisor restarts it. Exiting loses nothing: a submission
//! is answered 202 only once Kafka has acknowledged it.
//!
//! Invariants: a verdict needs a whole window of failures with no success, failures still
//! coming in (an idle ingress is never judged on old ones), and the cluster answering a new
//! client; while the cluster itself is down the ingress keeps answering 503 and waits.

use crate::events::IngressProducerStalled;
use crate::kafka::{Failing, Producer};
use crate::settings::KafkaSettings;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The window for a producer whose records time out after `produce_timeout`: six of them.
pub fn window(produce_timeout: Duration) -> Duration {
    produce_timeout * 6
}

/// Whether `failing` is evidence enough for a `window` (the cluster check aside).
pub fn stalled(failing: Option<Failing>, window: Duration) -> bool {
    failing.is_some_and(|f| f.for_ >= window && f.last <= window / 2)
}

/// Watches `producer` until `shutdown`; returns the time it had been failing when it is
/// judged wedged.
pub async fn watch(
    producer: &Producer,
    kafka: &KafkaSettings,
    window: Duration,
    shutdown: &CancellationToken,
) -> Option<Duration> {
    let tick = crate::runtime::watchdog::check_interval(window);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(tick) => {}
        }
        let failing = producer.failing();
        if stalled(failing, window) && Producer::cluster_reachable(kafka, Duration::from_secs(5)).await {
            let after = failing.map_or(window, |f| f.for_);
            IngressProducerStalled { after }.emit();
            return Some(after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_verdict_needs_a_whole_window_of_failures_still_coming_in() {
        let w = ms(60_000);
        assert!(!stalled(None, w), "no failure since the last success");
        assert!(!stalled(Some(Failing { for_: ms(59_000), last: ms(100) }), w), "not a whole window yet");
        assert!(stalled(Some(Failing { for_: ms(60_000), last: ms(100) }), w));
        assert!(stalled(Some(Failing { for_: ms(600_000), last: ms(30_000) }), w));
        assert!(!stalled(Some(Failing { for_: ms(600_000), last: ms(30_001) }), w), "idle since: old evidence");
        assert_eq!(window(ms(10_000)), ms(60_000));
    }
}
