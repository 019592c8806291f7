//! A per-process memo of agent definitions in front of Redis (and Postgres): one lookup per
//! agent per [`MEMO_TTL`] instead of one per request or task.
//!
//! Invariant: an agent change made through this process is seen at once (the change forgets
//! the entry); one made through another process is seen within [`MEMO_TTL`] (that process
//! drops the Redis copy on every change).

use crate::domain::Agent;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MEMO_TTL: Duration = Duration::from_secs(1);
/// Bound on remembered agents; past it the memo starts over.
const MAX_AGENTS: usize = 1024;

#[derive(Default)]
pub struct AgentMemo {
    agents: Mutex<HashMap<String, (Agent, Instant)>>,
}

impl AgentMemo {
    pub fn get(&self, name: &str) -> Option<Agent> {
        let agents = self.agents.lock().expect("lock");
        agents.get(name).filter(|(_, at)| at.elapsed() < MEMO_TTL).map(|(a, _)| a.clone())
    }

    pub fn forget(&self, name: &str) {
        self.agents.lock().expect("lock").remove(name);
    }

    pub fn put(&self, agent: &Agent) {
        let mut agents = self.agents.lock().expect("lock");
        if agents.len() >= MAX_AGENTS {
            agents.clear();
        }
        agents.insert(agent.name.clone(), (agent.clone(), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_the_ttl_only() {
        let memo = AgentMemo::default();
        let agent: Agent = serde_json::from_value(serde_json::json!({
            "name": "echo", "executor": "builtin", "config": {"mode": "echo"}, "description": "",
            "status": "active", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .expect("agent");
        assert!(memo.get("echo").is_none());
        memo.put(&agent);
        assert_eq!(memo.get("echo").map(|a| a.name), Some("echo".to_string()));
        memo.agents.lock().expect("lock").get_mut("echo").expect("entry").1 -= MEMO_TTL;
        assert!(memo.get("echo").is_none());
    }
}
