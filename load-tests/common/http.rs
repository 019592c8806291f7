//! The load generator's raw HTTP/1.1 keep-alive client and its closed- and open-loop drivers.

use super::*;

/// One request's bytes: `METHOD path` with Host, Authorization (if any) and a JSON body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Arc<Vec<u8>> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body_headers = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    };
    Arc::new(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{body_headers}\r\n{body}").into_bytes())
}

/// A keep-alive connection reading Content-Length framed responses.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { addr, stream, buf: Vec::with_capacity(16 * 1024) })
    }

    /// Sends `request` and reads the response: the status and, if `want_body`, the body.
    /// On an error or after `timeout` the connection is replaced (the exchange is lost).
    pub async fn exchange(
        &mut self,
        request: &[u8],
        want_body: bool,
        timeout: Duration,
    ) -> std::io::Result<(u16, Option<Vec<u8>>)> {
        let res = async {
            self.stream.write_all(request).await?;
            read_response(&mut self.stream, &mut self.buf, want_body).await
        };
        match tokio::time::timeout(timeout, res).await {
            Ok(Ok(r)) => Ok(r),
            other => {
                self.buf.clear();
                self.stream = TcpStream::connect(self.addr).await?;
                self.stream.set_nodelay(true)?;
                match other {
                    Ok(Err(e)) => Err(e),
                    _ => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "exchange timed out")),
                }
            }
        }
    }
}

/// Reads one response (status line, headers with Content-Length, body) from `stream`, using
/// `buf` as carry-over between responses.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    want_body: bool,
) -> std::io::Result<(u16, Option<Vec<u8>>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-utf8 head"))?;
            let status: u16 =
                head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| bad("response without content-length"))?;
            let total = end + 4 + len;
            while buf.len() < total {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(bad("eof in body"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = want_body.then(|| buf[end + 4..total].to_vec());
            buf.drain(..total);
            return Ok((status, body));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("eof in head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A success for the load tests: 2xx but not 207 (a partially written batch).
pub fn is_ok(status: u16) -> bool {
    (200..300).contains(&status) && status != 207
}

/// The outcome of a closed-loop run.
pub struct HttpRun {
    pub requests: u64,
    pub errors: u64,
    /// Non-success statuses (0 = a broken or timed-out exchange) and their counts.
    pub error_statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl HttpRun {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn errors_text(&self) -> String {
        statuses_text(&self.error_statuses)
    }
}

/// Non-success statuses and their counts as ` 503×2 0×1` (0 = a broken or timed-out exchange).
pub fn statuses_text(m: &BTreeMap<u16, u64>) -> String {
    m.iter().map(|(s, n)| format!(" {s}×{n}")).collect()
}

/// Called with a successful response's start instant and body.
pub type OnOk = Arc<dyn Fn(Instant, &[u8]) + Send + Sync>;

/// `conns` keep-alive connections, connection i sending `requests[i % len]` back to back for
/// `secs` (closed loop). `on_ok` sees each successful response's start and body (if
/// `want_body`).
pub async fn drive_http(
    addr: SocketAddr,
    requests: &[Arc<Vec<u8>>],
    conns: usize,
    secs: f64,
    want_body: bool,
    on_ok: Option<OnOk>,
) -> HttpRun {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..conns {
        let request = requests[i % requests.len()].clone();
        let on_ok = on_ok.clone();
        workers.spawn(async move {
            let mut h = hist();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut conn = Conn::open(addr).await.expect("connect");
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match conn.exchange(&request, want_body, Duration::from_secs(30)).await {
                    Ok((status, body)) => {
                        record(&mut h, t0.elapsed());
                        if is_ok(status) {
                            ok += 1;
                            if let Some(f) = &on_ok {
                                f(t0, body.as_deref().unwrap_or_default());
                            }
                        } else {
                            errors += 1;
                            *statuses.entry(status).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        *statuses.entry(0).or_default() += 1;
                    }
                }
            }
            (ok, errors, statuses, h)
        });
    }
    let mut run =
        HttpRun { requests: 0, errors: 0, error_statuses: BTreeMap::new(), elapsed: Duration::ZERO, hist: hist() };
    while let Some(j) = workers.join_next().await {
        let (ok, errors, statuses, h) = j.expect("worker");
        run.requests += ok;
        run.errors += errors;
        for (s, n) in statuses {
            *run.error_statuses.entry(s).or_default() += n;
        }
        run.hist.add(&h).unwrap();
    }
    run.elapsed = started.elapsed();
    run
}

/// The `task_id` of a 202 answer of POST /v1/tasks (`{"data":{"task_id":"…",…}…}`).
pub fn task_id_of(body: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"\"task_id\":\"";
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let len = body[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[at..at + len]).ok().map(String::from)
}
