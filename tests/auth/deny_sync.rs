//! A revoked access token stays refused when Redis loses its deny list: after a Redis restart
//! (no persistence: every key gone) and a `FLUSHALL` at once (Postgres answers while the list's
//! mark is missing), and under `maxmemory` evictions at once (the list and its mark are one key,
//! evicted together or not at all). Each test runs its own `redis-server` on a free 127.0.0.1
//! port, so filling or restarting it touches no other test.

use super::*;
use fred::prelude::*;
use std::process::{Child, Command, Stdio};

/// A private Redis, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    fn start_on(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/services)");
        PrivateRedis { port, child }
    }

    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A client of its own, once the server answers.
    async fn client(&self) -> Client {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let client = Client::new(Config::from_url(&self.url()).unwrap(), None, None, None);
            if client.init().await.is_ok() && client.ping::<String>(None).await.is_ok() {
                return client;
            }
            assert!(tokio::time::Instant::now() < deadline, "private redis-server on {} not answering", self.port);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills it and starts it again on the same port: every key is gone, the run id is new.
    fn restart(mut self) -> PrivateRedis {
        let port = self.port;
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Self::start_on(port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Redis (and a client of the test's own), an app on it checking the deny list every
/// `check_secs`, and a logged-out user's token.
async fn app_with_a_revoked_token(check_secs: u64) -> (PrivateRedis, Client, TestApp, String) {
    let redis = PrivateRedis::start();
    let client = redis.client().await;
    let url = redis.url();
    let app = TestApp::spawn_with(|s| {
        s.redis.url = devcycle::settings::Secret::new(url);
        s.auth.deny_list_check_secs = check_secs;
        s.rate_limits.enabled = false;
    })
    .await;
    let (_, token) = app.user_token("developer").await;
    logout_then_refused(&app, &token).await;
    (redis, client, app, token)
}

/// Waits (up to 10 s: ten checks) for the token to be refused as revoked again.
async fn refused_again_within_10s(app: &TestApp, token: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _, b) = get_with(app, "/v1/agents", token).await;
        if s == 401 && b["message"] == "token revoked" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the revoked token is still accepted: {s} {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stays_refused_after_redis_restarts_empty() {
    let (redis, _, app, token) = app_with_a_revoked_token(1).await;
    let redis = redis.restart();
    let fresh = redis.client().await;
    refused_again_within_10s(&app, &token).await;
    let jti = payload(&token)["jti"].as_str().unwrap().to_string();
    let key = devcycle::auth::deny_list_key(&app.deps.cache);
    // Refused by Postgres at once; the next check writes the list again (within 10 s), its
    // mark last.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !fresh.hexists::<bool, _, _>(&key, devcycle::auth::DENY_LIST_WHOLE).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the deny list was not written again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let until: i64 = fresh.hget(&key, &jti).await.unwrap();
    let left = until - chrono::Utc::now().timestamp();
    assert!(left > 800 && left <= 960 + 5, "the token is listed until its expiry (+60 s): {left}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stays_refused_after_redis_is_flushed() {
    let (_redis, client, app, token) = app_with_a_revoked_token(1).await;
    // Let a check or two pass, so the flush is not mistaken for the start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _: () = client.flushall(false).await.unwrap();
    refused_again_within_10s(&app, &token).await;
    app.stop().await;
}

/// Under memory pressure (the spec's `allkeys-lru`) Redis evicts keys it has not read lately.
/// The deny list and its mark are one key, so whichever way the evictions go a revoked token is
/// refused at every point: by its field, or by Postgres once the list is gone. The check runs
/// once, at start, so no rewrite repairs anything meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stays_refused_while_redis_evicts_keys() {
    let (_redis, client, app, token) = app_with_a_revoked_token(3600).await;
    let (_, live) = app.user_token("developer").await;
    // Fill the 8 MB Redis until it has evicted more than it holds (everything cold is gone),
    // with requests between writes, as traffic would make them.
    let filler = "x".repeat(64 * 1024);
    let mut evicted = 0u64;
    for i in 0..2_000 {
        let _: () = client.set(format!("filler:{i}"), filler.as_str(), None, None, false).await.unwrap();
        let (s, _, b) = get_with(&app, "/v1/agents", &token).await;
        assert_eq!((s, b["message"].as_str()), (401, Some("token revoked")), "after {evicted} evictions: {b}");
        assert_eq!(get_with(&app, "/v1/agents", &live).await.0, 200, "a live token passes");
        let info: String = client.info(Some(fred::types::InfoKind::Stats)).await.unwrap();
        evicted = devcycle::ingress::deny_sync::parse_info(&format!("run_id:-\n{info}")).unwrap().1;
        if evicted >= 300 {
            break;
        }
    }
    assert!(evicted >= 300, "Redis evicted {evicted} keys after the writes");
    app.stop().await;
}

/// The fields of expired tokens are dropped; live ones and the mark stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_pruned_from_the_deny_list() {
    use devcycle::auth::{deny_jti, deny_list_key, prune_deny_list, DENY_LIST_WHOLE};
    let app = TestApp::spawn().await;
    let cache = &app.deps.cache;
    let now = chrono::Utc::now().timestamp();
    // Listed until exp + 60 s: expired 2 minutes ago is past that, expired 30 s ago is not.
    deny_jti(cache, "expired-long-ago", now - 120).await.unwrap();
    deny_jti(cache, "expired-just-now", now - 30).await.unwrap();
    deny_jti(cache, "live", now + 900).await.unwrap();
    let key = deny_list_key(cache);
    let _: () = cache.pool().hset(&key, (DENY_LIST_WHOLE, "1")).await.unwrap();
    assert_eq!(prune_deny_list(cache, now).await.unwrap(), 1);
    let mut left: Vec<String> = cache.pool().hkeys(&key).await.unwrap();
    left.sort();
    assert_eq!(left, [DENY_LIST_WHOLE, "expired-just-now", "live"]);
    assert_eq!(prune_deny_list(cache, now + 2_000).await.unwrap(), 2);
    let left: Vec<String> = cache.pool().hkeys(&key).await.unwrap();
    assert_eq!(left, [DENY_LIST_WHOLE], "the mark is never pruned");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_mark_postgres_refuses_a_revoked_token_at_once() {
    // Only the check at start: no rewrite follows a loss within the test.
    let (redis, client, app, token) = app_with_a_revoked_token(3600).await;
    let (_, live) = app.user_token("developer").await;

    // Flushed: the deny list and its mark are gone; the revoked token is refused at once
    // (Postgres), a live one passes.
    let _: () = client.flushall(false).await.unwrap();
    let (s, _, b) = get_with(&app, "/v1/agents", &token).await;
    assert_eq!((s, b["message"].as_str()), (401, Some("token revoked")), "{b}");
    let (s, _, b) = get_with(&app, "/v1/agents", &live).await;
    assert_eq!(s, 200, "a live token passes: {b}");

    // Restarted empty: the same once the ingress has reconnected.
    let redis = redis.restart();
    let _client = redis.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _, b) = get_with(&app, "/v1/agents", &token).await;
        if s != 503 {
            assert_eq!((s, b["message"].as_str()), (401, Some("token revoked")), "{b}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still 503 after the restart: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get_with(&app, "/v1/agents", &live).await.0, 200);
    app.stop().await;
}
