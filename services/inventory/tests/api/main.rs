//! The inventory service against the real PostgreSQL and broker: commands in over Kafka,
//! replies out through the outbox, stock over gRPC.

mod commands;
mod concurrency;
mod grpc;
mod helpers;
mod readiness;
mod twopc;
