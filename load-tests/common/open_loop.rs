//! The open-loop generator: requests at a fixed offered rate over a number of connections,
//! latency counted from each request's scheduled start (coordinated omission corrected), and the
//! ids of accepted submissions kept to match them with their results.

use super::*;
use hdrhistogram::Histogram;
use tokio::time::Instant as TokioInstant;

/// What one open-loop connection measured.
#[derive(Default)]
pub struct OpenLoop {
    pub ok: u64,
    pub errors: BTreeMap<u16, u64>,
    /// Scheduled start → response read (coordinated omission corrected).
    pub from_schedule: Option<Histogram<u64>>,
    /// Actual send → response read (service time).
    pub from_send: Option<Histogram<u64>>,
    /// Actual send − scheduled start (how late the generator was).
    pub lag: Option<Histogram<u64>>,
    /// (task id, scheduled start, actual send, wall clock ms at the 202) of each accepted
    /// submission.
    pub ids: Vec<(String, Instant, Instant, i64)>,
}

impl OpenLoop {
    pub fn new() -> Self {
        OpenLoop { from_schedule: Some(hist()), from_send: Some(hist()), lag: Some(hist()), ..Default::default() }
    }
    pub fn merge(&mut self, o: OpenLoop) {
        self.ok += o.ok;
        for (s, n) in o.errors {
            *self.errors.entry(s).or_default() += n;
        }
        for (mine, theirs) in
            [(&mut self.from_schedule, o.from_schedule), (&mut self.from_send, o.from_send), (&mut self.lag, o.lag)]
        {
            if let (Some(m), Some(t)) = (mine.as_mut(), theirs) {
                m.add(&t).unwrap();
            }
        }
        self.ids.extend(o.ids);
    }
}

/// One connection of the open-loop generator: requests at `start + offset + k·interval` until
/// `end`. A request that cannot be sent on time (the previous one is still out, or the runtime
/// is busy) is sent as soon as possible and its latency counts from its scheduled time.
async fn open_conn(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    start: Instant,
    offset: Duration,
    interval: Duration,
    end: Instant,
    want_ids: bool,
) -> OpenLoop {
    let mut out = OpenLoop::new();
    let mut conn = Conn::open(addr).await.expect("connect");
    let mut k: u32 = 0;
    loop {
        let scheduled = start + offset + interval * k;
        if scheduled >= end {
            break;
        }
        k += 1;
        tokio::time::sleep_until(TokioInstant::from_std(scheduled)).await;
        let sent = Instant::now();
        let r = conn.exchange(&request, want_ids, Duration::from_secs(30)).await;
        let done = Instant::now();
        let done_ms = now_ms();
        match r {
            Ok((status, body)) if is_ok(status) => {
                out.ok += 1;
                record(out.from_schedule.as_mut().unwrap(), done - scheduled);
                record(out.from_send.as_mut().unwrap(), done - sent);
                record(out.lag.as_mut().unwrap(), sent.saturating_duration_since(scheduled));
                if let Some(id) = body.as_deref().and_then(task_id_of) {
                    out.ids.push((id, scheduled, sent, done_ms));
                }
            }
            Ok((status, _)) => *out.errors.entry(status).or_default() += 1,
            Err(_) => *out.errors.entry(0).or_default() += 1,
        }
    }
    out
}

/// `rate` requests/s in total over `conns` connections, evenly staggered, for `secs`.
pub async fn open_loop(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    rate: f64,
    conns: usize,
    secs: u64,
    want_ids: bool,
) -> OpenLoop {
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(secs);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conns {
        let offset = Duration::from_secs_f64(c as f64 / rate);
        set.spawn(open_conn(addr, request.clone(), start, offset, interval, end, want_ids));
    }
    let mut all = OpenLoop::new();
    while let Some(r) = set.join_next().await {
        all.merge(r.expect("open-loop connection"));
    }
    all
}

/// GET-style sampling of `request` at 100/s for `secs` from a thread of its own (its own
/// runtime), as a kubelet would probe: the server's load does not slow the sampler down.
pub fn sampler(at: SocketAddr, request: Arc<Vec<u8>>, secs: u64) -> std::thread::JoinHandle<OpenLoop> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(open_loop(at, request, 100.0, 1, secs, false))
    })
}

/// Waits for a [`sampler`] without blocking the runtime.
pub async fn join_sampler(h: std::thread::JoinHandle<OpenLoop>) -> OpenLoop {
    tokio::task::spawn_blocking(move || h.join()).await.unwrap().expect("sampler")
}
