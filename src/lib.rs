//! DevCycle: a Kafka-centric agent task pipeline.
//!
//! Producers (or the HTTP [`ingress`]) post Avro TaskRequests to Kafka; consumer-group
//! [`processors`] run them on agents' [`executors`], record results in Postgres ([`db`]) and
//! Redis ([`cache`]), and publish TaskResults and TaskEvents. [`app::run`] wires it together;
//! `main.rs` only parses arguments, loads [`settings`] and starts [`telemetry`].

/// mimalloc for every binary that links this crate (the service, its tests and load tests
/// alike): under load glibc's malloc and free were about a quarter of a processor's CPU
/// (load-tests/RESULTS.md). With the crate's `override` feature it is the process's `malloc` as
/// well, so librdkafka and the other C libraries allocate from it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod agent_memo;
pub mod app;
pub mod auth;
pub mod avro;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod db;
pub mod domain;
pub mod events;
pub mod executors;
pub mod gateway;
pub mod ingress;
pub mod kafka;
pub mod memory;
pub mod ops;
pub mod otlp;
pub mod processors;
pub mod progress;
pub mod registry;
pub mod runtime;
pub mod settings;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_support;
pub mod topics;

/// An error with its causes, `outer: inner: innermost`, for one log line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}
