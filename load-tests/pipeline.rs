//! `pipeline`: pre-loaded echo tasks through one agent-executor vs a raw consume-and-produce
//! loop over the same records.

use crate::common::*;
use devcycle::app::{self, Mode};
use devcycle::catalog::Catalog;
use devcycle::settings::Settings;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub async fn run(tasks: usize, timeout_secs: u64) {
    let peak_resettable = reset_peak_rss();
    let deps = connect(bench_settings()).await;
    let req_topic = deps.catalog.topic_name(REQUESTS);
    let res_topic = deps.catalog.topic_name(RESULTS);
    let producer = raw_producer(&deps.settings);

    let t = Instant::now();
    let reqs: Vec<_> = (0..tasks).map(|_| echo_request()).collect();
    let payloads = encode_all(&deps, &req_topic, &reqs).await;
    let encode_rate = tasks as f64 / t.elapsed().as_secs_f64();
    let preload_rate = preload(&producer, &req_topic, &payloads).await;
    println!("# pipeline: {tasks} echo tasks in {req_topic}; peak RSS resettable: {peak_resettable}");
    println!("# codec encode_request: {encode_rate:.0}/s; preload produce: {preload_rate:.0} rec/s");

    // DevCycle: one agent-executor process part.
    reset_peak_rss();
    let stages = Stages::take();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle =
        tokio::spawn(app::run_with(deps.clone(), Mode::Process("agent-executor".into()), shutdown.clone(), None));
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut first_seen: Option<Duration> = None;
    // Progress from this process's metrics (a task's last step, `publish`, ends after its
    // Postgres commit), so that watching costs Postgres nothing; then the count in Postgres.
    while Instant::now() < deadline {
        let published = Stages::take().count("publish") - stages.count("publish");
        if published > 0.0 && first_seen.is_none() {
            first_seen = Some(started.elapsed());
        }
        if published as usize >= tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut done = 0i64;
    while Instant::now() < deadline {
        done = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM tasks WHERE status IN ('succeeded','failed','dead_lettered','cancelled','expired')",
        )
        .fetch_one(&deps.pool)
        .await
        .unwrap_or(0);
        if done as usize >= tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_done = started.elapsed();
    let (hwm, _) = rss_mib();
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
        .fetch_one(&deps.pool)
        .await
        .unwrap_or(0);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), handle).await;

    // First-to-last result from the results topic's record timestamps (ms resolution).
    let (n_results, first_ts, last_ts) = read_timestamps(&deps.settings, &res_topic, tasks).await;
    let span_s = (last_ts - first_ts) as f64 / 1000.0;
    let dc_rate = if span_s > 0.0 { (n_results.saturating_sub(1)) as f64 / span_s } else { f64::NAN };
    let cols = ["target", "records", "terminal in PG", "succeeded", "first result s", "all done s"];
    table(&[&cols[..], &["first→last result s", "rate/s", RSS]].concat(), "lrrrrrrrr");
    println!(
        "| devcycle agent-executor | {tasks} | {done} | {succeeded} | {:.2} | {:.2} | {span_s:.2} | {dc_rate:.0} | {hwm:.1} |",
        first_seen.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        all_done.as_secs_f64(),
    );

    // Baseline: raw consume -> produce in a separate namespace, same bytes.
    let base = bench_settings();
    let catalog = Catalog::load(&base).expect("catalog");
    devcycle::topics::apply(&base, &catalog).await.expect("baseline topics");
    let b_in = catalog.topic_name(REQUESTS);
    let b_out = catalog.topic_name(RESULTS);
    let bp = raw_producer(&base);
    preload(&bp, &b_in, &payloads).await;
    reset_peak_rss();
    let (n, span, first_to_last) = raw_loop(&base, &b_in, &b_out, tasks, timeout_secs).await;
    let (hwm, _) = rss_mib();
    let raw_rate = (n.saturating_sub(1)) as f64 / first_to_last.as_secs_f64();
    println!(
        "| raw StreamConsumer→FutureProducer | {tasks} | – | {n} | – | {:.2} | {:.2} | {raw_rate:.0} | {hwm:.1} |",
        span.as_secs_f64(),
        first_to_last.as_secs_f64()
    );
    println!();
    println!("devcycle/raw ratio: {:.3} (target ≥ 0.3)", dc_rate / raw_rate);
    println!("{}", Stages::since(&stages));
    cleanup(&deps.settings, &deps.catalog, &deps.pool).await;
    cleanup(&base, &catalog, &deps.pool).await;
}

/// Reads `topic` from the beginning until `want` records: (count, min timestamp, max timestamp).
pub async fn read_timestamps(s: &Settings, topic: &str, want: usize) -> (usize, i64, i64) {
    let c: StreamConsumer = devcycle::kafka::reader_config(&s.kafka, "reader").create().unwrap();
    c.subscribe(&[topic]).unwrap();
    let (mut n, mut lo, mut hi) = (0usize, i64::MAX, i64::MIN);
    while n < want {
        match tokio::time::timeout(Duration::from_secs(15), c.recv()).await {
            Ok(Ok(m)) => {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                lo = lo.min(ts);
                hi = hi.max(ts);
                n += 1;
            }
            _ => break,
        }
    }
    (n, lo, hi)
}

/// Consumes `want` records from `input` and produces each payload to `output` (acks=all),
/// at most 256 in flight. Returns (records, start→done, first consumed→last acked).
async fn raw_loop(
    s: &Settings,
    input: &str,
    output: &str,
    want: usize,
    timeout_secs: u64,
) -> (usize, Duration, Duration) {
    let c: StreamConsumer = devcycle::kafka::client_config(&s.kafka, "bench-raw-consumer")
        .set("group.id", format!("{}raw-loop", s.kafka.namespace))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .unwrap();
    c.subscribe(&[input]).unwrap();
    let p = raw_producer(s);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_secs);
    let mut first: Option<Instant> = None;
    let mut pending = FuturesUnordered::new();
    let (mut consumed, mut acked) = (0usize, 0usize);
    while acked < want && Instant::now() < deadline {
        if consumed < want && pending.len() < 256 {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(15), c.recv()).await else { break };
            first.get_or_insert_with(Instant::now);
            consumed += 1;
            let key = m.key().map(|k| k.to_vec()).unwrap_or_default();
            let value = m.payload().map(|v| v.to_vec()).unwrap_or_default();
            let p = p.clone();
            let out = output.to_string();
            pending.push(async move {
                let rec = FutureRecord::to(&out).key(key.as_slice()).payload(value.as_slice());
                p.send(rec, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
            });
        } else if let Some(r) = pending.next().await {
            r.expect("raw loop send");
            acked += 1;
        }
    }
    let first = first.unwrap_or(started);
    (acked, started.elapsed(), first.elapsed())
}
