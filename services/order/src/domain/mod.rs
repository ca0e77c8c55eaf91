//! The order service's domain: no I/O.
//!
//! - [`clock`]: when the command in flight has waited long enough (from its publication, with
//!   backoff and jitter).
//! - [`order`]: a validated order (lines, total in minor units, address, account).
//! - [`saga`]: the order saga's state machine: decide (event -> fact), evolve (fact -> state).
//! - [`stream`]: the order's event stream (encoding, upcasting) and the aggregate folded from it.

pub mod clock;
pub mod order;
pub mod saga;
pub mod stream;
