//! Integration tests of the outbox and inbox against the real PostgreSQL and the real broker
//! (start them with `infra/local/stack.sh up postgres kafka`; `make test` does).

mod group;
mod helpers;
mod inbox;
mod outbox;
mod service;
