//! The payment service against the real PostgreSQL and broker.

mod commands;
mod grpc;
mod helpers;
