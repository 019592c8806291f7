//! Agents: a named executor configuration that tasks run on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// echo / sleep / fail: for tests and demos.
    Builtin,
    /// POST the input to a URL; the response body is the output.
    Http,
    /// Run a program with the input on stdin; stdout is the output.
    Command,
}

impl ExecutorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Builtin => "builtin",
            ExecutorKind::Http => "http",
            ExecutorKind::Command => "command",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "builtin" => Some(ExecutorKind::Builtin),
            "http" => Some(ExecutorKind::Http),
            "command" => Some(ExecutorKind::Command),
            _ => None,
        }
    }

    /// Whether running an agent of this kind can change anything outside DevCycle (a program's
    /// effects, an HTTP call). One that cannot may run before its task's status is known: the
    /// write that follows keeps a final task as it was.
    pub fn has_side_effects(self) -> bool {
        !matches!(self, ExecutorKind::Builtin)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Active,
    Disabled,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Disabled => "disabled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AgentStatus::Active),
            "disabled" => Some(AgentStatus::Disabled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub name: String,
    pub executor: ExecutorKind,
    pub config: serde_json::Value,
    pub description: String,
    pub status: AgentStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Agent names: 1–63 characters of `[a-z0-9._-]`, starting with a letter or digit.
pub fn validate_agent_name(name: &str) -> Result<(), &'static str> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err("must be 1-63 characters of [a-z0-9._-], starting with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_agent_name("echo").is_ok());
        assert!(validate_agent_name("my-agent.v2_x").is_ok());
        for bad in ["", "-x", "Echo", "a b", "x'; drop table agents;--", &"a".repeat(64)] {
            assert!(validate_agent_name(bad).is_err(), "{bad}");
        }
    }
}
