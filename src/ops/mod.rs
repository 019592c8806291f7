//! Operations commands: dead letters, status and consumer lag, user accounts and their data
//! (export, erasure); configuration changes in the audit log.

pub mod config_audit;
pub mod dlq;
pub mod privacy;
pub mod status;
pub mod users;
