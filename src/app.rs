//! Process wiring: connects the shared dependencies once ([`Deps`]) and runs the ingress and
//! the declared processors until shutdown (`run`, `ingress`, `process`).
//!
//! Invariants: topics, schemas and migrations are applied before anything serves or consumes
//! (when configured); every long-running part stops on the one shutdown token, and the
//! producer is flushed last.

use crate::avro::Codec;
use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::executors::Executors;
use crate::kafka::Producer;
use crate::settings::Settings;
use crate::{db, ingress, processors, registry, topics};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("declarations: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("postgres: {0}")]
    Db(#[from] db::DbError),
    #[error("redis: {0}")]
    Cache(#[from] crate::cache::CacheError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topics: {0}")]
    Topics(#[from] topics::TopicsError),
    #[error("schemas: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("avro: {0}")]
    Codec(#[from] crate::avro::EncodeError),
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    #[error("unknown processor `{0}`: no processors/{0}.toml")]
    UnknownProcessor(String),
    #[error("processor `{name}` names handler `{handler}`, which is not registered")]
    UnknownHandler { name: String, handler: String },
    #[error("processor `{0}` failed: {1}")]
    Processor(String, crate::runtime::RunnerError),
    #[error("kafka producer failed every record for {0:?} while the cluster answers")]
    ProducerStalled(Duration),
}

/// The dependencies shared by the ingress and processors of one process.
pub struct Deps {
    pub settings: Settings,
    pub catalog: Catalog,
    pub pool: PgPool,
    pub cache: Cache,
    pub producer: Producer,
    pub codec: Codec,
    pub executors: Executors,
    /// Trace spans (exported over OTLP when `telemetry.otlp_endpoint` is set).
    pub tracer: crate::otlp::Tracer,
    /// The ingress's client for the registry's latest schemas (see
    /// [`crate::gateway::latest_schema`]).
    pub registry_http: reqwest::Client,
    /// Health of the processors running in this process (for /ready and /startup).
    pub runners: std::sync::Mutex<Vec<(String, Arc<crate::runtime::RunnerHealth>)>>,
    /// A throwaway password hash at this process's argon2 cost, made on first use: logins and
    /// password changes for unknown emails verify against it (see `ingress::auth`).
    pub dummy_password_hash: tokio::sync::OnceCell<String>,
}

impl Deps {
    /// Connects everything; applies migrations, topics and schemas when configured.
    pub async fn connect(settings: Settings) -> Result<Arc<Deps>, StartError> {
        let catalog = Catalog::load(&settings)?;
        let pool = db::connect(&settings.database).await?;
        if settings.database.migrate_on_start {
            db::migrate(&pool).await?;
        }
        if settings.kafka.apply_on_start {
            let changes = topics::apply(&settings, &catalog).await?;
            for change in &changes {
                tracing::info!(change = %change, "topics apply");
            }
            crate::ops::config_audit::topics_applied(&pool, "service", &changes).await?;
            let applied = registry::apply_all(&settings, &catalog).await?;
            for r in &applied {
                tracing::info!(subject = %r.subject, id = r.id, new_version = r.new_version, "schema applied");
            }
            crate::ops::config_audit::schemas_applied(&pool, "service", &applied).await?;
        }
        let cache = Cache::connect(&settings.redis).await?;
        let producer =
            Producer::new(&settings.kafka, "producer", Duration::from_millis(settings.http.produce_timeout_ms))?;
        let codec = Codec::new(
            &settings.schema_registry.url,
            Duration::from_millis(settings.schema_registry.timeout_ms),
            &catalog.schemas,
        )?;
        let tracer = crate::otlp::Tracer::start(&settings.telemetry, settings.environment.as_str());
        Ok(Arc::new(Deps {
            settings,
            catalog,
            pool,
            cache,
            producer,
            codec,
            executors: Executors::new(),
            tracer,
            registry_http: reqwest::Client::new(),
            runners: Default::default(),
            dummy_password_hash: Default::default(),
        }))
    }
}

/// What to run in this process.
pub enum Mode {
    /// The ingress and the processors listed in `run.processors`.
    All,
    Ingress,
    Process(String),
}

/// Runs `mode` until `shutdown` fires. The ingress's bound address is sent on `bound` (port 0
/// in tests).
pub async fn run(
    settings: Settings,
    mode: Mode,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), StartError> {
    let deps = Deps::connect(settings).await?;
    run_with(deps, mode, shutdown, bound).await
}

/// Like [`run`] with already connected dependencies.
pub async fn run_with(
    deps: Arc<Deps>,
    mode: Mode,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), StartError> {
    let names: Vec<String> = match &mode {
        Mode::All => deps.settings.run.processors.clone(),
        Mode::Ingress => vec![],
        Mode::Process(n) => vec![n.clone()],
    };
    let mut tasks = tokio::task::JoinSet::new();
    for name in names {
        let spec = deps.catalog.processor(&name).cloned().ok_or_else(|| StartError::UnknownProcessor(name.clone()))?;
        let launch = processors::lookup(&spec.handler)
            .ok_or_else(|| StartError::UnknownHandler { name: name.clone(), handler: spec.handler.clone() })?;
        let health = Arc::new(crate::runtime::RunnerHealth::default());
        deps.runners.lock().expect("lock").push((name.clone(), health.clone()));
        let fut = launch(deps.clone(), spec, health, shutdown.clone());
        tasks.spawn(async move { fut.await.map_err(|e| StartError::Processor(name, e)) });
    }
    // Probes and /metrics run on their own thread in every mode (see ingress::probes); the
    // ingress serves them on its API port as well.
    let api = match mode {
        Mode::Process(_) => None,
        _ => Some(ingress::Server::bind(deps.clone()).await?),
    };
    let probe_stop = shutdown.child_token();
    let probes = ingress::Probes::spawn(deps.clone(), probe_stop.clone())?;
    if let Some(tx) = bound {
        let _ = tx.send(api.as_ref().map_or(probes.local_addr(), |s| s.local_addr()));
    }
    if let Some(server) = api {
        let token = shutdown.clone();
        tasks.spawn(async move {
            server.serve(token).await;
            Ok(())
        });
        let (d, token) = (deps.clone(), shutdown.clone());
        let every = Duration::from_secs(d.settings.auth.deny_list_check_secs);
        tasks.spawn(async move {
            ingress::deny_sync::keep(d, every, token).await;
            Ok(())
        });
        let (d, token) = (deps.clone(), shutdown.clone());
        let window = ingress::producer_watch::window(Duration::from_millis(d.settings.http.produce_timeout_ms));
        tasks.spawn(async move {
            match ingress::producer_watch::watch(&d.producer, &d.settings.kafka, window, &token).await {
                Some(after) => Err(StartError::ProducerStalled(after)),
                None => Ok(()),
            }
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One part failed: stop the others and report it.
                tracing::error!(error = %crate::error_chain(&e), "component failed; shutting down");
                shutdown.cancel();
                result = Err(e);
            }
            Err(join) => {
                tracing::error!(error = %join, "component panicked; shutting down");
                shutdown.cancel();
            }
        }
    }
    probe_stop.cancel();
    probes.join().await;
    deps.tracer.flush(Duration::from_secs(5)).await;
    deps.producer.flush(Duration::from_secs(10));
    result
}
