//! # shop-core
//!
//! The frame every service is built in. Read in this order:
//!
//! - [`app`]: [`app::Application`], the bind -> serve -> drain frame of every binary.
//! - [`config`]: layered settings (struct defaults, then an optional TOML file, then `SHOP__*` env).
//! - [`telemetry`]: tracing (JSON or pretty logs) and the Prometheus `/metrics` endpoint.
//! - [`error`]: [`error::ServiceError`], mapped once to `tonic::Status`.
//! - [`shutdown`]: signal -> cancellation token -> drain under a deadline.
//! - [`db`]: PostgreSQL pools, creating a service's own database on first start.
//! - [`fields`]: the validation layer: every field crossing an edge is parsed there, with its limit.
//! - [`grpc`]: the gRPC server frame (health, reflection, graceful stop) and field validation helpers.
//! - [`readiness`]: gRPC health from probes of the service's stores and broker, NOT_SERVING on shutdown.

pub mod app;
pub mod config;
pub mod db;
pub mod error;
pub mod grpc;
pub mod readiness;
pub mod shutdown;
pub mod telemetry;

pub use error::ServiceError;
/// The one validation layer (types with `parse`), re-exported so every adapter reaches it here.
pub use shop_fields as fields;
