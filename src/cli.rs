//! Command-line interface: the subcommands of the one `devcycle` binary.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "devcycle", version, about = "Kafka-centric agent task pipeline")]
pub struct Cli {
    /// Folder with default.toml and {ENVIRONMENT}.toml.
    #[arg(long, global = true, env = "DEVCYCLE_CONFIG_DIR", default_value = "config")]
    pub config_dir: PathBuf,
    /// Progress of long-running commands on stderr: a redrawn line on a terminal (tty),
    /// periodic lines (plain), or none (off). auto: tty when stderr is a terminal, else plain.
    #[arg(long, global = true, env = "DEVCYCLE_PROGRESS", value_enum, default_value = "auto")]
    pub progress: crate::progress::Mode,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ingress and every processor in `run.processors` in one process.
    Run,
    /// Run the HTTP ingress only.
    Ingress,
    /// Run one processor declared in processors/{NAME}.toml.
    Process { name: String },
    /// Apply pending database migrations.
    Migrate,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Topic declarations (topics/).
    Topics {
        #[command(subcommand)]
        action: ApplyAction,
    },
    /// Users who may call the HTTP API.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Avro schemas (schemas/), registered under {TOPIC}-value.
    Schemas {
        #[command(subcommand)]
        action: ApplyAction,
    },
    /// Brokers, topics against their declarations, consumer groups with members and lag,
    /// dead-letter depth, and the health of each service.
    Status,
    /// Consumer lag per processor group and partition.
    Lag {
        /// Only this group (with or without the namespace).
        #[arg(long)]
        group: Option<String>,
    },
    /// Data retention: delete audit log rows, sessions and password history past `[retention]`,
    /// and expired Idempotency-Key records.
    Retention {
        #[command(subcommand)]
        action: RetentionAction,
    },
    /// Dead letters: list them, or re-publish them to their source topic once fixed.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters with their reason and origin.
    List(DlqFilter),
    /// Re-publish matching dead letters (each at most once) to their source topic.
    Replay {
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be replayed without doing it.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct DlqFilter {
    /// Only dead letters of this error class (dlq.error.class).
    #[arg(long)]
    pub class: Option<String>,
    /// Only dead letters from this source topic.
    #[arg(long)]
    pub source_topic: Option<String>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum RetentionAction {
    /// Delete what is past retention, in batches; print what was deleted.
    Apply {
        /// Count what would be deleted without deleting.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApplyAction {
    /// Make the cluster/registry match the declarations; print what changed.
    Apply,
}

/// A user, by email or (also after an erasure) by id.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct UserRef {
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
}

impl UserRef {
    pub fn subject(self) -> crate::ops::privacy::Subject {
        use crate::ops::privacy::Subject;
        match (self.email, self.id) {
            (Some(email), _) => Subject::Email(email),
            (None, Some(id)) => Subject::Id(id),
            (None, None) => unreachable!("clap requires one of --email and --id"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Create a user; the password comes from DEVCYCLE_PASSWORD or the first line of stdin.
    Create {
        #[arg(long)]
        email: String,
        /// admin, developer, viewer or service.
        #[arg(long, default_value = "developer")]
        role: String,
    },
    /// Lock a user out at once: login and refresh refused, every session ended and its access
    /// token deny-listed.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Let a disabled user log in again.
    Enable {
        #[arg(long)]
        email: String,
    },
    /// Everything the database holds about a user (profile, sessions, service tokens they
    /// created, tasks and their events, audit entries), as JSON lines on stdout; no secrets.
    Export {
        #[command(flatten)]
        who: UserRef,
    },
    /// Forget a user: lock them out, delete their tasks (with events), password history and
    /// Idempotency-Key records, and keep only an anonymous, disabled tombstone. Audit entries
    /// stay for their year. Run it again by --id to catch tasks written after it.
    Erase {
        #[command(flatten)]
        who: UserRef,
    },
    /// Seal every TOTP seed under the current auth.data_key (after a key rotation, with the old
    /// key as auth.data_key_previous; or for seeds stored before sealing).
    Reencrypt,
}
