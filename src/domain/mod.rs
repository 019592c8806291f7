//! Domain types shared by the ingress and the processors: validated values, never raw records.
//!
//! Invariants: a [`TaskRequest`] has a valid uuid, a valid agent name and `input` that is JSON
//! text; terminal statuses are never left once reached (see [`TaskStatus::is_terminal`]).

mod agent;
mod task;

pub use agent::{validate_agent_name, Agent, AgentStatus, ExecutorKind};
pub use task::{TaskEvent, TaskRequest, TaskResult, TaskStatus, SUBMITTED_BY_HEADER};
