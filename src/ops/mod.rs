//! Operations commands: reading and replaying dead letters.

pub mod dlq;
