//! Operations commands: dead letters, status and consumer lag, user accounts.

pub mod dlq;
pub mod status;
pub mod users;
