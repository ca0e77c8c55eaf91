//! The order service's domain: no I/O.
//!
//! - [`order`]: a validated order (lines, total in minor units, address, account).
//! - [`saga`]: the order saga's state machine.

pub mod order;
pub mod saga;
