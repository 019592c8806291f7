//! The processor table: every handler a `processors/<name>.toml` may name, registered in one
//! place. Each handler lives in its own file.

mod agent_executor;

use crate::app::Deps;
use crate::catalog::ProcessorSpec;
use crate::runtime::{RunnerError, RunnerHealth};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Starts a handler's runner; resolves when it stops.
pub type Launch =
    fn(Arc<Deps>, ProcessorSpec, Arc<RunnerHealth>, CancellationToken) -> BoxFuture<'static, Result<(), RunnerError>>;

/// Handler name (as written in `processors/*.toml`) to its launcher.
pub const HANDLERS: &[(&str, Launch)] = &[("agent_executor", agent_executor::launch)];

pub fn lookup(handler: &str) -> Option<Launch> {
    HANDLERS.iter().find(|(n, _)| *n == handler).map(|(_, l)| *l)
}

/// Starts the runner for a processor implementation with the spec's topics and group.
pub(crate) fn launch_with<P: crate::runtime::Processor>(
    deps: Arc<Deps>,
    spec: ProcessorSpec,
    processor: P,
    health: Arc<RunnerHealth>,
    shutdown: CancellationToken,
) -> BoxFuture<'static, Result<(), RunnerError>> {
    Box::pin(async move {
        let config = crate::runtime::RunnerConfig {
            input_topic: deps.catalog.topic_name(&spec.input),
            group: deps.catalog.group_name(&spec.group),
            dead_letter_topic: deps.catalog.topic_name(&spec.outputs.dead_letters),
            // Long enough for a rebalance or a short outage to settle; see runtime::watchdog.
            stall_after: std::time::Duration::from_millis(deps.settings.kafka.session_timeout_ms * 6),
            spec,
        };
        crate::runtime::run_processor(
            &deps.settings.kafka,
            config,
            deps.producer.clone(),
            Arc::new(processor),
            health,
            shutdown,
        )
        .await
    })
}
