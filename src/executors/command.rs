//! The `command` executor: runs `config.program` with `config.args`, the input JSON on stdin,
//! a memory limit (`config.memory_limit_mb`, default 1024, the spec's per-agent limit) and
//! the processor's timeout (the child is killed when the attempt is dropped). Exit 0: stdout is
//! the output. Non-zero exit fails the task with stderr; exit 75 (EX_TEMPFAIL) is retryable.

use super::{output_json, ExecError};
use serde_json::Value;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Largest stdout accepted as output.
const MAX_OUTPUT: usize = 10 * 1024 * 1024;

pub async fn run(config: &Value, input: &Value) -> Result<Value, ExecError> {
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
    let mut cmd = Command::new(program);
    cmd.args(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
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
    let mut stdin = child.stdin.take().expect("piped stdin");
    let payload = input.to_string();
    let writer = async move {
        // A program that does not read its input closes the pipe: not an error.
        let _ = stdin.write_all(payload.as_bytes()).await;
        drop(stdin);
    };
    let (_, out) = tokio::join!(writer, child.wait_with_output());
    let out = out.map_err(|e| ExecError::retryable("command_io", e.to_string()))?;
    if out.stdout.len() > MAX_OUTPUT {
        return Err(ExecError::failed("output_too_large", format!("stdout over {MAX_OUTPUT} bytes")));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).chars().take(2000).collect::<String>();
    match out.status.code() {
        Some(0) => Ok(output_json(&String::from_utf8_lossy(&out.stdout))),
        Some(75) => Err(ExecError::retryable("command_tempfail", stderr)),
        Some(code) => Err(ExecError::failed("command_exit", format!("exit status {code}: {stderr}"))),
        None => Err(ExecError::failed("command_killed", format!("killed by a signal: {stderr}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[tokio::test]
    async fn memory_limit_stops_a_hungry_program() {
        // python allocating 200 MB under a 64 MB address-space limit fails.
        let cfg = json!({"program": "python3", "args": ["-c", "x = bytearray(200*1024*1024)"], "memory_limit_mb": 64});
        assert!(run(&cfg, &json!({})).await.is_err());
    }
}
