//! Operations commands: dead letters, status and consumer lag, user accounts; configuration
//! changes in the audit log.

pub mod config_audit;
pub mod dlq;
pub mod status;
pub mod users;
