//! Operations commands: dead letters, status and consumer lag.

pub mod dlq;
pub mod status;
