//! The order saga end to end: order, inventory, payment and shipping running against the real
//! PostgreSQL and broker, each with its own database, sharing one private topic namespace.

mod choreography;
mod clock;
mod crash;
mod event_sourcing;
mod fuzz;
mod helpers;
mod saga;
mod twopc;
