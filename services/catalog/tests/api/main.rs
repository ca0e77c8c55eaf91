//! The catalog against the real MongoDB-wire server, Redis, the broker and the embedded index.

mod helpers;
mod products;
mod search;
