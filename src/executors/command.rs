//! The `command` executor: runs `config.program` with `config.args`, the input JSON on stdin,
//! a memory limit (`config.memory_limit_mb`, default 1024, the spec's per-agent limit) and
//! the processor's timeout. Exit 0: stdout is the output. Non-zero exit fails the task with
//! stderr; exit 75 (EX_TEMPFAIL) is retryable.
//!
//! Invariants:
//! - the program runs in a process group of its own, and the whole group is killed when the
//!   program exits and when the attempt is dropped (timeout, cancellation, shutdown): nothing
//!   it started outlives the attempt, and a background child still holding stdout open cannot
//!   keep the attempt waiting;
//! - a process that left the group (`setsid`, a daemon) is found by the environment variable
//!   [`ATTEMPT_VAR`], unique to the attempt, which every process it starts inherits, and killed
//!   with the group. Only one that both leaves the group and drops that variable (`env -i`)
//!   escapes: no cgroup is at hand to hold it;
//! - the attempt's trace context is the program's `TRACEPARENT` (W3C, as OpenTelemetry's
//!   environment carriers name it), so a traced program joins the task's trace;
//! - memory is bounded: stdout beyond [`MAX_OUTPUT`] fails the attempt (the group is killed
//!   rather than read further), and only the first [`MAX_STDERR`] bytes of stderr are kept.

use super::{output_json, ExecError};
use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Largest stdout accepted as output.
const MAX_OUTPUT: usize = 10 * 1024 * 1024;

/// How much of stderr is kept: enough for the [`STDERR_CHARS`] characters the error quotes (the
/// rest is read and dropped, so the program never blocks on it).
const MAX_STDERR: usize = 4 * STDERR_CHARS;

/// How many characters of stderr a failed attempt's error quotes.
const STDERR_CHARS: usize = 2000;

/// Set in the program's environment to a value unique to the attempt (`<uuid>`).
pub const ATTEMPT_VAR: &str = "DEVCYCLE_ATTEMPT";

/// Sweeps of `/proc` per kill: one that forks while being swept is found by the next.
const SWEEPS: usize = 5;

/// The program's process group and the processes that carry the attempt's [`ATTEMPT_VAR`]:
/// killed when this is dropped, and on [`Group::kill`].
struct Group {
    pgid: libc::pid_t,
    /// `ATTEMPT_VAR=<value>`, as it appears in `/proc/<pid>/environ`.
    entry: String,
    /// Set once a sweep found none alive after the group was killed: nothing is left to find.
    swept: std::sync::atomic::AtomicBool,
}

impl Group {
    fn kill(&self) {
        // SAFETY: killpg has no memory effects. The group's id is the program's pid, which is
        // not reused while the group has a member or the program is not yet reaped; once both
        // are gone this finds no group (ESRCH).
        unsafe {
            libc::killpg(self.pgid, libc::SIGKILL);
        }
        if !self.swept.load(std::sync::atomic::Ordering::Relaxed) && kill_marked(&self.entry) {
            self.swept.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Kills every process whose environment holds `entry`, sweeping `/proc` up to [`SWEEPS`]
/// times; whether the last sweep found none alive. A process that ended has an empty
/// `environ` (and one of another user cannot be read): neither is found.
fn kill_marked(entry: &str) -> bool {
    for _ in 0..SWEEPS {
        let Ok(dir) = std::fs::read_dir("/proc") else { return true };
        let mut found = false;
        for pid in dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok()) {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
            if environ.split(|b| *b == 0).any(|var| var == entry.as_bytes()) {
                // SAFETY: kill has no memory effects; the pid was alive with the attempt's
                // variable a moment ago (pids are handed out in turn, so not yet reused).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                found = true;
            }
        }
        if !found {
            return true;
        }
    }
    false
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn run(config: &Value, input: &Value, traceparent: Option<String>) -> Result<Value, ExecError> {
    let program = config
        .get("program")
        .and_then(Value::as_str)
        .ok_or_else(|| ExecError::failed("agent_misconfigured", "command agent needs config.program"))?;
    let args: Vec<String> = config
        .get("args")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let memory_mb = config.get("memory_limit_mb").and_then(Value::as_u64).unwrap_or(1024);
    let attempt = uuid::Uuid::new_v4().simple().to_string();
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .env(ATTEMPT_VAR, &attempt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    match traceparent {
        Some(tp) => cmd.env("TRACEPARENT", tp),
        None => cmd.env_remove("TRACEPARENT"),
    };
    let limit = memory_mb.saturating_mul(1024 * 1024);
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_AS, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|e| ExecError::failed("command_spawn", format!("cannot start {program}: {e}")))?;
    let group = Group {
        pgid: child.id().expect("a running child has a pid") as libc::pid_t,
        entry: format!("{ATTEMPT_VAR}={attempt}"),
        swept: false.into(),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let (stdout, stderr) = (child.stdout.take().expect("piped stdout"), child.stderr.take().expect("piped stderr"));
    let payload = input.to_string();
    let writer = async move {
        // A program that does not read its input closes the pipe: not an error.
        let _ = stdin.write_all(payload.as_bytes()).await;
        drop(stdin);
    };
    let exited = async {
        let status = child.wait().await;
        // What the program left running would hold the pipes open (and run on).
        group.kill();
        status
    };
    let output = async {
        let (out, over) = read_capped(stdout, MAX_OUTPUT, false).await;
        if over {
            group.kill();
        }
        (out, over)
    };
    let (_, status, (out, over), (err, _)) =
        tokio::join!(writer, exited, output, read_capped(stderr, MAX_STDERR, true));
    let status = status.map_err(|e| ExecError::retryable("command_io", e.to_string()))?;
    if over {
        return Err(ExecError::failed("output_too_large", format!("stdout over {MAX_OUTPUT} bytes")));
    }
    let out = out.map_err(|e| ExecError::retryable("command_io", e.to_string()))?;
    let stderr = String::from_utf8_lossy(&err.unwrap_or_default()).chars().take(STDERR_CHARS).collect::<String>();
    match status.code() {
        Some(0) => Ok(output_json(&String::from_utf8_lossy(&out))),
        Some(75) => Err(ExecError::retryable("command_tempfail", stderr)),
        Some(code) => Err(ExecError::failed("command_exit", format!("exit status {code}: {stderr}"))),
        None => Err(ExecError::failed("command_killed", format!("killed by a signal: {stderr}"))),
    }
}

/// Reads `pipe` to its end, keeping at most `cap` bytes; whether there was more. Past `cap` it
/// reads on and drops what it reads when `drain`, and stops reading otherwise.
async fn read_capped(mut pipe: impl AsyncRead + Unpin, cap: usize, drain: bool) -> (std::io::Result<Vec<u8>>, bool) {
    let mut kept = Vec::new();
    let read = (&mut pipe).take(cap as u64 + 1).read_to_end(&mut kept).await;
    let over = kept.len() > cap;
    kept.truncate(cap);
    let read = match read {
        Ok(_) if over && drain => tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await.map(|_| ()),
        r => r.map(|_| ()),
    };
    (read.map(|()| kept), over)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An attempt without trace context.
    async fn run(config: &Value, input: &Value) -> Result<Value, ExecError> {
        super::run(config, input, None).await
    }

    #[tokio::test]
    async fn runs_with_stdin_and_reports_exit_codes() {
        let out = run(&json!({"program": "cat"}), &json!({"a": 1})).await.unwrap();
        assert_eq!(out, json!({"a": 1}));
        let e = run(&json!({"program": "sh", "args": ["-c", "echo bad >&2; exit 3"]}), &json!({})).await.unwrap_err();
        assert_eq!(e.class(), "command_exit");
        assert!(e.message().contains("bad"));
        let e = run(&json!({"program": "sh", "args": ["-c", "exit 75"]}), &json!({})).await.unwrap_err();
        assert!(matches!(e, ExecError::Retryable { .. }));
        let e = run(&json!({"program": "/nonexistent/prog"}), &json!({})).await.unwrap_err();
        assert_eq!(e.class(), "command_spawn");
    }

    /// Whether `pid` has ended (gone, or a zombie not yet reaped), waiting up to 5 s.
    async fn ended(pid: i64) -> bool {
        for _ in 0..50 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                // The state follows the parenthesised name.
                Ok(stat) if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) => return true,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        false
    }

    #[tokio::test]
    async fn a_background_child_neither_holds_the_attempt_nor_outlives_it() {
        // The background `sleep` keeps stdout open: the attempt ends with its program, and the
        // `sleep` with it.
        let started = std::time::Instant::now();
        let out = run(&json!({"program": "sh", "args": ["-c", "sleep 30 & echo $!"]}), &json!({})).await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
        let pid = out.as_i64().expect("the background pid");
        assert!(ended(pid).await, "the background child {pid} still runs");
    }

    /// Runs a program that starts `child` in the background and waits for it, drops the attempt
    /// after 1.5 s, and returns the child's pid.
    async fn child_of_a_dropped_attempt(child: &str) -> i64 {
        let file = std::env::temp_dir().join(format!("devcycle-child-{}", uuid::Uuid::new_v4()));
        let script = format!("{child} & echo $! > '{}'; wait", file.display());
        let (config, input) = (json!({"program": "sh", "args": ["-c", script]}), json!({}));
        let attempt = tokio::time::timeout(std::time::Duration::from_millis(1500), run(&config, &input));
        assert!(attempt.await.is_err(), "the attempt was still running");
        let pid = std::fs::read_to_string(&file).unwrap().trim().parse().unwrap();
        let _ = std::fs::remove_file(&file);
        pid
    }

    #[tokio::test]
    async fn dropping_the_attempt_kills_its_whole_process_group() {
        let pid = child_of_a_dropped_attempt("sleep 30").await;
        assert!(ended(pid).await, "the program's child {pid} outlived the dropped attempt");
    }

    #[tokio::test]
    async fn a_child_that_left_the_group_is_killed_with_the_attempt() {
        // `setsid` puts the `sleep` in a session (and group) of its own, still holding stdout:
        // the attempt ends with its program all the same, and the `sleep` with it. The program
        // waits (≤ 5 s) until the `sleep` has left its group (the group's kill would catch it
        // before), then ends.
        let started = std::time::Instant::now();
        let script = "setsid sleep 30 & p=$!; i=0; \
            while [ \"$(cut -d' ' -f5 /proc/$p/stat)\" != \"$p\" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
            echo $p";
        let out = run(&json!({"program": "sh", "args": ["-c", script]}), &json!({})).await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
        let pid = out.as_i64().expect("the setsid pid");
        assert!(ended(pid).await, "the child {pid} that left the group still runs");

        // The same when the attempt is dropped while the program runs.
        let pid = child_of_a_dropped_attempt("setsid sleep 30").await;
        assert!(ended(pid).await, "the child {pid} that left the group outlived the dropped attempt");
    }

    #[tokio::test]
    async fn the_program_sees_its_attempt() {
        let out =
            run(&json!({"program": "sh", "args": ["-c", "printf 'attempt %s' \"$DEVCYCLE_ATTEMPT\""]}), &json!({}))
                .await
                .unwrap();
        let attempt = out.as_str().and_then(|o| o.strip_prefix("attempt ")).expect("the attempt id");
        assert_eq!(attempt.len(), 32, "{attempt}");
        assert!(attempt.bytes().all(|b| b.is_ascii_hexdigit()), "{attempt}");
    }

    #[tokio::test]
    async fn the_program_gets_the_attempt_s_trace_context() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string();
        let cfg = json!({"program": "sh", "args": ["-c", "printf '%s' \"$TRACEPARENT\""]});
        assert_eq!(super::run(&cfg, &json!({}), Some(tp.clone())).await.unwrap(), json!(tp));
    }

    #[tokio::test]
    async fn output_is_bounded_and_stderr_is_drained() {
        let started = std::time::Instant::now();
        let e = run(&json!({"program": "yes"}), &json!({})).await.unwrap_err();
        assert_eq!(e.class(), "output_too_large");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
        // 1 MB on stderr (over what is kept) does not block the program; the error keeps its start.
        let cfg = json!({"program": "sh", "args": ["-c", "head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 3"]});
        let e = run(&cfg, &json!({})).await.unwrap_err();
        assert_eq!(e.class(), "command_exit");
        assert!(e.message().contains("xxxx"), "{}", e.message());
    }

    #[tokio::test]
    async fn memory_limit_stops_a_hungry_program() {
        // python allocating 200 MB under a 64 MB address-space limit fails.
        let cfg = json!({"program": "python3", "args": ["-c", "x = bytearray(200*1024*1024)"], "memory_limit_mb": 64});
        assert!(run(&cfg, &json!({})).await.is_err());
    }
}
