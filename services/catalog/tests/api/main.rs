//! The catalog against the real MongoDB-wire server, Redis, the broker and both search backends.

mod counters;
mod fuzz;
mod helpers;
mod outbox;
mod products;
mod profiles;
mod replicas;
mod search;
mod wire;
