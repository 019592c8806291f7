//! `--process BIN` (modes `ingress`, `sleep` and `spike`): the component under test as a process
//! of its own (`BIN ingress`, `BIN process agent-executor`, `BIN run`; the release binary), so that its peak RSS is
//! its own, not that of the generator's connections, the readers and the baselines sharing this
//! process. It gets this run's isolated settings through
//! `DEVCYCLE__*` variables ([`Settings::isolation_env`], and the raised limits of
//! `bench_settings`);
//! migrations, topics and schemas were applied here first.
//!
//! Invariant: the child is stopped (SIGTERM, then SIGKILL after 10 s) when the handle drops.

use devcycle::settings::Settings;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Separate {
    child: Child,
    /// Where its HTTP port listens (the ingress's API port; a processor's is unused).
    pub addr: SocketAddr,
}

impl Separate {
    /// Starts `bin ingress` on a free port of 127.0.0.1 and waits (up to 30 s) until it accepts
    /// connections.
    pub async fn ingress(bin: &Path, s: &Settings, log: &Path) -> Separate {
        Separate::listening(bin, &["ingress"], s, log, 0).await
    }

    /// Starts `bin run` (the ingress and the processors of `run.processors`) with its probes on
    /// `metrics_port`, and waits (up to 30 s) until its ingress accepts connections.
    pub async fn all(bin: &Path, s: &Settings, log: &Path, metrics_port: u16) -> Separate {
        Separate::listening(bin, &["run"], s, log, metrics_port).await
    }

    async fn listening(bin: &Path, args: &[&str], s: &Settings, log: &Path, metrics_port: u16) -> Separate {
        let mut sep = Separate::spawn(bin, args, s, log, metrics_port);
        let addr = sep.addr;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = sep.child.try_wait() {
                panic!("{} {args:?} exited before it listened ({status}); see {}", bin.display(), log.display());
            }
            assert!(Instant::now() < deadline, "{} {args:?} did not listen on {addr} within 30 s", bin.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sep
    }

    /// Starts `bin process <name>`.
    pub fn processor(bin: &Path, name: &str, s: &Settings, log: &Path) -> Separate {
        Separate::spawn(bin, &["process", name], s, log, 0)
    }

    fn spawn(bin: &Path, args: &[&str], s: &Settings, log: &Path, metrics_port: u16) -> Separate {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let never = s.rate_limits.api_per_window.to_string();
        let child = Command::new(bin)
            .args(args)
            .current_dir(crate::common::root())
            .env("ENVIRONMENT", "test")
            .env("DEVCYCLE__HTTP__HOST", "127.0.0.1")
            .env("DEVCYCLE__HTTP__PORT", port.to_string())
            .env("DEVCYCLE__METRICS__PORT", metrics_port.to_string())
            .envs(s.isolation_env())
            .env("DEVCYCLE__DATABASE__MAX_CONNECTIONS", s.database.max_connections.to_string())
            .env("DEVCYCLE__REDIS__POOL_SIZE", s.redis.pool_size.to_string())
            .env("DEVCYCLE__RATE_LIMITS__API_PER_WINDOW", &never)
            .env("DEVCYCLE__RATE_LIMITS__SUBMIT_PER_WINDOW", &never)
            .env("DEVCYCLE__RATE_LIMITS__AUTH_PER_WINDOW", &never)
            .env("DEVCYCLE__GATEWAY__QUOTA_RECORDS_PER_SEC", &never)
            .env("DEVCYCLE__GATEWAY__QUOTA_BYTES_PER_SEC", &never)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).expect("log file"))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Separate { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Separate {
    fn drop(&mut self) {
        // SAFETY: signals our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
