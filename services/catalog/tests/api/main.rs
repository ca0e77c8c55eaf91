//! The catalog against the real MongoDB-wire server, Redis, the broker and both search backends.

mod fuzz;
mod helpers;
mod outbox;
mod products;
mod replicas;
mod search;
mod wire;
