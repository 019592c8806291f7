//! The `devcycle` binary: parse arguments, load configuration, start telemetry, run.

use anyhow::Context;
use clap::Parser;
use devcycle::app::{self, Mode};
use devcycle::catalog::Catalog;
use devcycle::cli::{ApplyAction, Cli, Command, DlqAction, DlqFilter, RetentionAction, UsersAction};
use devcycle::progress::{self, Progress};
use devcycle::settings::Settings;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    devcycle::memory::apply();
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("devcycle: configuration refused: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    devcycle::telemetry::init(&settings);
    devcycle::progress::set_mode(cli.progress);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "devcycle failed");
            eprintln!("devcycle: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Config => {
            print!("{}", settings.redacted_toml());
            Ok(())
        }
        Command::Migrate => {
            let pool = devcycle::db::connect(&settings.database).await?;
            progress::while_running("migrate", devcycle::db::migrate(&pool)).await?;
            println!("migrations applied (schema {})", settings.database.schema);
            Ok(())
        }
        Command::Topics { action: ApplyAction::Apply } => {
            let catalog = Catalog::load(&settings)?;
            let mut p = Progress::new("topics apply", "topics");
            let changes = devcycle::topics::apply_with(&settings, &catalog, &mut p).await?;
            let changed = changes.iter().any(|c| c.is_change());
            if !changed {
                println!("topics: no changes");
            }
            for c in &changes {
                println!("{c}");
            }
            if changed {
                let pool = devcycle::db::connect(&settings.database).await.context(NOT_RECORDED)?;
                devcycle::ops::config_audit::topics_applied(&pool, "cli", &changes).await.context(NOT_RECORDED)?;
            }
            Ok(())
        }
        Command::Schemas { action: ApplyAction::Apply } => {
            let catalog = Catalog::load(&settings)?;
            let mut p = Progress::new("schemas apply", "subjects");
            let applied =
                devcycle::registry::apply_all_with(&settings, &catalog, &mut p).await.context("schemas apply")?;
            for r in &applied {
                let what = if r.new_version { "registered" } else { "unchanged" };
                println!("{} {what} (id {})", r.subject, r.id);
            }
            if applied.iter().any(|r| r.new_version) {
                let pool = devcycle::db::connect(&settings.database).await.context(NOT_RECORDED)?;
                devcycle::ops::config_audit::schemas_applied(&pool, "cli", &applied).await.context(NOT_RECORDED)?;
            }
            Ok(())
        }
        Command::Dlq { action } => dlq(action, settings).await,
        Command::Status => {
            let report = progress::while_running("status", async {
                let deps = app::Deps::connect(settings).await?;
                anyhow::Ok(devcycle::ops::status::status_report(&deps).await)
            })
            .await?;
            print!("{report}");
            Ok(())
        }
        Command::Lag { group } => {
            let deps = app::Deps::connect(settings).await?;
            let report = tokio::task::block_in_place(|| devcycle::ops::status::lag_report(&deps, group.as_deref()))?;
            print!("{report}");
            Ok(())
        }
        Command::Retention { action: RetentionAction::Apply { dry_run } } => {
            let pool = devcycle::db::connect(&settings.database).await?;
            let run = devcycle::db::retention::apply(&pool, &settings, dry_run);
            let r = progress::while_running("retention apply", run).await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            println!(
                "retention: {verb} {} audit log row(s), {} session(s), {} password history row(s), {} expired idempotency key(s)",
                r.audit_log, r.sessions, r.password_history, r.idempotency_keys
            );
            Ok(())
        }
        Command::Users { action: UsersAction::Create { email, role } } => {
            let password = match std::env::var("DEVCYCLE_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("read the password from stdin")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let pool = devcycle::db::connect(&settings.database).await?;
            if settings.database.migrate_on_start {
                devcycle::db::migrate(&pool).await?;
            }
            let user = devcycle::auth::create_user(&pool, &settings.auth, &email, &password, &role).await?;
            let entry = devcycle::db::users::AuditEntry {
                actor: Some("cli"),
                action: "user_create",
                outcome: "success",
                target: Some(&email),
                details: serde_json::json!({"user_id": user.id, "role": user.role}),
                ..Default::default()
            };
            devcycle::db::users::audit(&pool, &entry).await?;
            println!("user {} created ({}, role {})", user.id, user.email, user.role);
            Ok(())
        }
        Command::Users { action: UsersAction::Disable { email } } => set_disabled(&settings, &email, true).await,
        Command::Users { action: UsersAction::Enable { email } } => set_disabled(&settings, &email, false).await,
        Command::Users { action: UsersAction::Export { who } } => {
            let pool = devcycle::db::connect(&settings.database).await?;
            let (id, lines) =
                devcycle::ops::privacy::export(&pool, &who.subject(), &mut std::io::stdout().lock()).await?;
            eprintln!("user {id}: {lines} record(s) exported");
            Ok(())
        }
        Command::Users { action: UsersAction::Erase { who } } => {
            let pool = devcycle::db::connect(&settings.database).await?;
            let cache = devcycle::cache::Cache::connect(&settings.redis).await?;
            let done = devcycle::ops::privacy::erase(&pool, &cache, &who.subject()).await?;
            let e = &done.erased;
            println!(
                "user {} erased: {} session(s) ended, {} task(s) deleted, {} idempotency key(s), {} password history row(s), {} service token(s) unlinked",
                done.user, done.sessions_ended, e.tasks.len(), e.idempotency_keys, e.password_history, e.service_tokens_unlinked
            );
            Ok(())
        }
        Command::Users { action: UsersAction::Reencrypt } => {
            let pool = devcycle::db::connect(&settings.database).await?;
            let (resealed, all) = devcycle::ops::users::reencrypt(&pool, &settings.auth).await?;
            println!("TOTP secrets: {resealed} sealed again under the current key ({all} in all)");
            Ok(())
        }
        Command::Run => Ok(app::run(settings, Mode::All, shutdown_on_signals(), None).await?),
        Command::Ingress => Ok(app::run(settings, Mode::Ingress, shutdown_on_signals(), None).await?),
        Command::Process { name } => Ok(app::run(settings, Mode::Process(name), shutdown_on_signals(), None).await?),
    }
}

/// What a failed audit write after an apply says: the change was made.
const NOT_RECORDED: &str = "the change was made, but not recorded in the audit log";

/// `users disable|enable --email`.
async fn set_disabled(settings: &Settings, email: &str, disable: bool) -> anyhow::Result<()> {
    let pool = devcycle::db::connect(&settings.database).await?;
    let cache = devcycle::cache::Cache::connect(&settings.redis).await?;
    let (user, ended) = devcycle::ops::users::set_disabled(&pool, &cache, email, disable).await?;
    if disable {
        println!("user {} disabled ({}); {ended} session(s) ended", user.id, user.email);
    } else {
        println!("user {} enabled ({})", user.id, user.email);
    }
    Ok(())
}

fn filter_of(f: DlqFilter) -> devcycle::ops::dlq::Filter {
    devcycle::ops::dlq::Filter { class: f.class, source_topic: f.source_topic, limit: f.limit }
}

async fn dlq(action: DlqAction, settings: Settings) -> anyhow::Result<()> {
    use devcycle::runtime::dlq as h;
    let deps = progress::while_running("connecting", app::Deps::connect(settings)).await?;
    match action {
        DlqAction::List(f) => {
            let mut p = Progress::new("dlq read", "records");
            let letters = devcycle::ops::dlq::list_with(&deps, &filter_of(f), &mut p).await?;
            println!("{} dead letter(s)", letters.len());
            for (l, replayed) in letters {
                let get = |k| l.header(k).unwrap_or_default();
                println!(
                    "{}:{} class={} source={}:{}:{} attempts={} last={}{} message={}",
                    l.partition,
                    l.offset,
                    get(h::H_CLASS),
                    get(h::H_TOPIC),
                    get(h::H_PARTITION),
                    get(h::H_OFFSET),
                    get(h::H_ATTEMPTS),
                    get(h::H_LAST),
                    if replayed { " [replayed]" } else { "" },
                    get(h::H_MESSAGE).chars().take(200).collect::<String>(),
                );
            }
        }
        DlqAction::Replay { filter, dry_run } => {
            let mut p = Progress::new(if dry_run { "dlq replay (dry run)" } else { "dlq replay" }, "dead letters");
            let done = devcycle::ops::dlq::replay_with(&deps, &filter_of(filter), dry_run, &mut p).await?;
            let verb = if dry_run { "would replay" } else { "replayed" };
            println!("{verb} {} dead letter(s)", done.len());
            for l in done {
                println!("{}:{} -> {}", l.partition, l.offset, l.header(h::H_TOPIC).unwrap_or_default());
            }
        }
    }
    Ok(())
}
