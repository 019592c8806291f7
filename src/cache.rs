//! Redis: hot task status and cached agent metadata (with a short per-process memo in front,
//! [`AgentMemo`], so hot paths do not ask Redis for the same agent on every task).
//!
//! Invariants: every key starts with the configured prefix (tests get one each) and has a TTL
//! (task status: `task_status_ttl_secs`, and the shorter `task_final_status_ttl_secs` once the
//! task is final, so Redis's memory follows the task rate, not a day of history; agents: the
//! spec's 30 minutes); Redis is a cache of
//! Postgres, never the only copy of anything, so a lost key only costs a Postgres read. Every
//! command is bounded by `timeout_ms` so an unavailable Redis fails fast.

use crate::agent_memo::AgentMemo;
use crate::domain::{Agent, TaskStatus};
use crate::settings::RedisSettings;
use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::{MultipleKeys, MultipleValues};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use uuid::Uuid;

/// The Lua table of final statuses, and `expire`, which gives a task's hash the TTL its status
/// calls for: ARGV[2] seconds once final, ARGV[1] before. It must match
/// TaskStatus::is_terminal (a unit test compares them).
macro_rules! status_lua {
    ($body:literal) => {
        concat!(
            "local final = { succeeded = true, failed = true, dead_lettered = true, cancelled = true, expired = true }\n",
            "local function expire()\n",
            "  local now = redis.call('HGET', KEYS[1], 'status')\n",
            "  redis.call('EXPIRE', KEYS[1], (now and final[now]) and ARGV[2] or ARGV[1])\n",
            "end\n",
            $body
        )
    };
}

/// Sets the field/value pairs ARGV[3..] on hash KEYS[1] (one HSET) and sets its TTL by the
/// status it then holds, unless that would take a final status back to one that is not: a late
/// `running` or `retrying` never hides a task's end (returns 0 then).
static SET_FIELDS: Script = Script::new(status_lua!(
    r#"
local new
for i = 3, #ARGV, 2 do if ARGV[i] == 'status' then new = ARGV[i + 1] end end
if new and not final[new] then
  local current = redis.call('HGET', KEYS[1], 'status')
  if current and final[current] then return 0 end
end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
expire()
return 1
"#
));

/// Like [`SET_FIELDS`] but only fills fields not set yet (HSETNX), so a later writer's values win
/// whatever order the writes land in (a submission's late `queued` keeps a final status, and
/// its shorter TTL).
static SET_ABSENT_FIELDS: Script = Script::new(status_lua!(
    r#"
for i = 3, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
expire()
return 1
"#
));

#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct CacheError(#[from] fred::error::Error);

/// The client configuration of `s.url`; with TLS files set (a `rediss://` url, checked by the
/// settings), a TLS connector that trusts `tls_ca_path` as well as the system's roots and
/// presents the client certificate.
pub fn client_config(s: &RedisSettings) -> Result<Config, CacheError> {
    use fred::native_tls::{Certificate, Identity, TlsConnector};
    let mut config = Config::from_url(s.url.expose())?;
    if s.tls_ca_path.is_empty() && s.tls_cert_path.is_empty() {
        return Ok(config);
    }
    let tls_error = |what: &str, e: &dyn std::fmt::Display| {
        fred::error::Error::new(fred::error::ErrorKind::Tls, format!("redis TLS {what}: {e}"))
    };
    let read = |path: &str| std::fs::read(path).map_err(|e| tls_error(path, &e));
    let mut builder = TlsConnector::builder();
    if !s.tls_ca_path.is_empty() {
        let ca = Certificate::from_pem(&read(&s.tls_ca_path)?).map_err(|e| tls_error(&s.tls_ca_path, &e))?;
        builder.add_root_certificate(ca);
    }
    if !s.tls_cert_path.is_empty() {
        let identity = Identity::from_pkcs8(&read(&s.tls_cert_path)?, &read(&s.tls_key_path)?)
            .map_err(|e| tls_error("client certificate", &e))?;
        builder.identity(identity);
    }
    let connector = builder.build().map_err(|e| tls_error("connector", &e))?;
    config.tls = Some(fred::types::config::TlsConnector::from(connector).into());
    Ok(config)
}

#[derive(Clone)]
pub struct Cache {
    pool: Pool,
    prefix: String,
    status_ttl: i64,
    final_status_ttl: i64,
    agent_ttl: i64,
    memo: Arc<AgentMemo>,
}

/// The hot status of a task as kept in Redis (all fields optional but `status`).
pub type StatusFields = HashMap<String, String>;

impl Cache {
    pub async fn connect(s: &RedisSettings) -> Result<Cache, CacheError> {
        let config = client_config(s)?;
        let timeout = Duration::from_millis(s.timeout_ms);
        let pool = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 2;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2))
            .build_pool(s.pool_size)?;
        pool.init().await?;
        Ok(Cache {
            pool,
            prefix: s.key_prefix.clone(),
            status_ttl: s.task_status_ttl_secs as i64,
            final_status_ttl: s.task_final_status_ttl_secs as i64,
            agent_ttl: s.agent_cache_ttl_secs as i64,
            memo: Arc::default(),
        })
    }

    pub fn task_key(&self, id: Uuid) -> String {
        format!("{}task:{}", self.prefix, id)
    }
    fn agent_key(&self, name: &str) -> String {
        format!("{}agent:{}", self.prefix, name)
    }

    /// Writes the given fields of a task's status hash and sets its TTL by the status it then
    /// holds (`task_final_status_ttl_secs` once final), in one round trip.
    pub async fn set_status(&self, id: Uuid, fields: Vec<(&str, String)>) -> Result<(), CacheError> {
        self.write_fields(&SET_FIELDS, id, fields).await
    }

    /// Marks a newly submitted task `queued`, unless a processor already wrote a status.
    pub async fn set_queued(
        &self,
        id: Uuid,
        agent: &str,
        submitted_at: &str,
        submitted_by: Option<&str>,
    ) -> Result<(), CacheError> {
        let mut fields = vec![
            ("status", TaskStatus::Queued.as_str().to_string()),
            ("agent", agent.to_string()),
            ("created_at", submitted_at.to_string()),
            ("attempts", "0".to_string()),
        ];
        if let Some(by) = submitted_by {
            fields.push(("submitted_by", by.to_string()));
        }
        self.write_fields(&SET_ABSENT_FIELDS, id, fields).await
    }

    /// Runs one of the field scripts on a task's hash: one command, one round trip.
    async fn write_fields(&self, script: &Script, id: Uuid, fields: Vec<(&str, String)>) -> Result<(), CacheError> {
        let mut args = Vec::with_capacity(2 + fields.len() * 2);
        args.push(self.status_ttl.to_string());
        args.push(self.final_status_ttl.to_string());
        for (k, v) in fields {
            args.push(k.to_string());
            args.push(v);
        }
        // Boxed: fred's command future is ~6 KB, and every task holds this one while it
        // publishes (its own future would carry it inline).
        let _: i64 = Box::pin(script.run(&self.pool, vec![self.task_key(id)], args)).await?;
        Ok(())
    }

    pub async fn forget_task(&self, id: Uuid) -> Result<(), CacheError> {
        let _: i64 = self.pool.del(self.task_key(id)).await?;
        Ok(())
    }

    /// The hot status of a task, if cached.
    pub async fn get_status(&self, id: Uuid) -> Result<Option<StatusFields>, CacheError> {
        let map: StatusFields = self.pool.hgetall(self.task_key(id)).await?;
        Ok(if map.contains_key("status") { Some(map) } else { None })
    }

    pub async fn get_agent(&self, name: &str) -> Result<Option<Agent>, CacheError> {
        if let Some(a) = self.memo.get(name) {
            return Ok(Some(a));
        }
        // Boxed: a memo miss is rare, and the Redis command's future (~5.8 KB) would otherwise
        // make every caller's future that much larger for the whole of its life.
        let v: Option<String> = Box::pin(self.pool.get(self.agent_key(name))).await?;
        let agent: Option<Agent> = v.and_then(|s| serde_json::from_str(&s).ok());
        if let Some(a) = &agent {
            self.memo.put(a);
        }
        Ok(agent)
    }

    pub async fn put_agent(&self, agent: &Agent) -> Result<(), CacheError> {
        self.memo.put(agent);
        let json = serde_json::to_string(agent).expect("agent serializes");
        let _: () =
            self.pool.set(self.agent_key(&agent.name), json, Some(Expiration::EX(self.agent_ttl)), None, false).await?;
        Ok(())
    }

    pub async fn forget_agent(&self, name: &str) -> Result<(), CacheError> {
        self.memo.forget(name);
        let _: i64 = self.pool.del(self.agent_key(name)).await?;
        Ok(())
    }

    /// The pub/sub channel on which cancellations are announced to processors.
    pub fn cancel_channel(&self) -> String {
        format!("{}cancel", self.prefix)
    }

    /// Tells running processors to stop a task.
    pub async fn publish_cancel(&self, id: Uuid) -> Result<(), CacheError> {
        let _: i64 = self.pool.next().publish(self.cancel_channel(), id.to_string()).await?;
        Ok(())
    }

    /// Calls `on_cancel` with each task id announced on the cancel channel, resubscribing after
    /// reconnects, until `stop` fires.
    pub async fn listen_cancels(
        s: &RedisSettings,
        stop: tokio_util::sync::CancellationToken,
        on_cancel: impl Fn(Uuid) + Send + 'static,
    ) -> Result<(), CacheError> {
        let config = client_config(s)?;
        let sub = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2))
            .build_subscriber_client()?;
        sub.init().await?;
        let manage = sub.manage_subscriptions();
        sub.subscribe(format!("{}cancel", s.key_prefix)).await?;
        let mut rx = sub.message_rx();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    msg = rx.recv() => match msg {
                        Ok(m) => {
                            if let Some(id) = m.value.convert::<String>().ok().and_then(|v| Uuid::parse_str(&v).ok()) {
                                on_cancel(id);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                }
            }
            manage.abort();
            let _ = sub.quit().await;
        });
        Ok(())
    }

    pub async fn ping(&self) -> bool {
        let r: Result<String, _> = self.pool.ping(None).await;
        r.is_ok()
    }

    /// (pool size, connected clients).
    pub fn pool_state(&self) -> (usize, usize) {
        let clients = self.pool.clients();
        (clients.len(), clients.iter().filter(|c| c.is_connected()).count())
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A Lua script run by its SHA-1 (`EVALSHA`): a call sends the 40-character hash instead of the
/// script's text (hundreds of bytes), and Redis looks the script up instead of hashing that text
/// again. A server that does not hold it (restarted, failed over, `SCRIPT FLUSH`) answers
/// `NOSCRIPT`; that call is then made with `EVAL`, which also loads the script for the next ones.
pub struct Script {
    lua: &'static str,
    /// Shared bytes: each call takes a reference, not a copy.
    sha: OnceLock<Str>,
}

impl Script {
    pub const fn new(lua: &'static str) -> Script {
        Script { lua, sha: OnceLock::new() }
    }

    pub fn lua(&self) -> &'static str {
        self.lua
    }

    /// The script's SHA-1, as Redis names it.
    pub fn sha(&self) -> &str {
        self.sha_str()
    }

    fn sha_str(&self) -> &Str {
        self.sha.get_or_init(|| fred::util::sha1_hash(self.lua).into())
    }

    /// Runs the script on `pool` with `keys` and `args` (one round trip; two the first time a
    /// server sees it).
    pub async fn run<R, K, V>(&self, pool: &Pool, keys: K, args: V) -> Result<R, CacheError>
    where
        R: FromValue,
        K: Into<MultipleKeys>,
        V: TryInto<MultipleValues>,
        V::Error: Into<fred::error::Error>,
    {
        let sha = self.sha_str().clone();
        let keys: MultipleKeys = keys.into();
        let args: MultipleValues = args.try_into().map_err(Into::into)?;
        match pool.evalsha(sha, keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                Ok(pool.eval(fred::util::static_str(self.lua), keys, args).await?)
            }
            other => Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_scripts_know_the_final_statuses() {
        for script in [&SET_FIELDS, &SET_ABSENT_FIELDS] {
            for s in TaskStatus::ALL {
                assert_eq!(script.lua().contains(&format!(" {s} = true")), s.is_terminal(), "{s}");
            }
        }
    }
}
