//! Hostile inputs for fuzzing the request paths: every service's tests draw requests from these
//! and assert that no input is answered with INTERNAL or a panic.

use proptest::{prelude::*, strategy::ValueTree};

/// Strings a careless or hostile client sends: empty, blank, NUL and other control characters,
/// non-ASCII, a little over each limit, far over every limit (past PostgreSQL's index entry,
/// Kafka's message size), and plausible values.
pub fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._-]{1,12}",
        1 => Just(String::new()),
        1 => Just("   ".to_owned()),
        2 => "[a-z]{0,8}\0[a-z]{0,8}",
        1 => "\\PC{0,40}",
        1 => "[\\x00-\\x1f\\x7f]{1,8}",
        1 => "[A-Z]{2,3}",
        1 => (60usize..600).prop_map(|n| "x".repeat(n)),
        1 => (3_000usize..70_000).prop_map(|n| "é".repeat(n)),
        1 => Just("a".repeat(1 << 20)),
    ]
}

/// A `u64` at the edges: zero, one, the signed and unsigned maxima, anything.
pub fn u64_edge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>()
    ]
}

/// A `u32` at the edges.
pub fn u32_edge() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), 0u32..20_000, any::<u32>()]
}

/// An `i64` at the edges.
pub fn i64_edge() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(-1),
        Just(i64::MAX),
        Just(i64::MIN),
        -10_000i64..1_000_000,
        any::<i64>()
    ]
}

/// A protobuf `Money`, absent or with hostile parts.
pub fn money() -> impl Strategy<Value = Option<shop_proto::common::Money>> {
    proptest::option::weighted(
        0.9,
        (i64_edge(), string()).prop_map(|(amount_minor, currency)| shop_proto::common::Money {
            amount_minor,
            currency,
        }),
    )
}

/// A protobuf `Address`, absent or with hostile parts.
pub fn address() -> impl Strategy<Value = Option<shop_proto::common::Address>> {
    proptest::option::weighted(
        0.9,
        (string(), string(), string(), string(), string(), string()).prop_map(
            |(name, line1, line2, city, postal_code, country)| shop_proto::common::Address {
                name,
                line1,
                line2,
                city,
                postal_code,
                country,
            },
        ),
    )
}

/// Up to `max` order lines with hostile parts.
pub fn line_items(max: usize) -> impl Strategy<Value = Vec<shop_proto::common::LineItem>> {
    proptest::collection::vec(
        (string(), u32_edge(), money()).prop_map(|(sku, quantity, unit_price)| {
            shop_proto::common::LineItem {
                sku,
                quantity,
                unit_price,
            }
        }),
        0..max,
    )
}

/// Draws `cases` values from `strategy` (no shrinking: for async tests against a running service,
/// where each case is a real call). Deterministic per `seed`, so a failure can be replayed.
pub fn sample<S: Strategy>(strategy: S, cases: usize, seed: u64) -> Vec<S::Value> {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    (0..cases)
        .filter_map(|_| strategy.new_tree(&mut runner).ok().map(|t| t.current()))
        .collect()
}

/// Fails the test if `result` is a server fault: INTERNAL, UNKNOWN (a panic or a reset stream),
/// UNAVAILABLE or DATA_LOSS. Any other answer is one a client's input may get.
pub fn assert_no_server_fault<T>(
    rpc: &str,
    input: &impl std::fmt::Debug,
    result: &Result<T, tonic::Status>,
) {
    use tonic::Code;
    if let Err(status) = result
        && matches!(
            status.code(),
            Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss
        )
    {
        let mut shown = format!("{input:?}");
        if shown.len() > 400 {
            let mut end = 400;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("...");
        }
        panic!("{rpc} answered {status:?} to a client's input: {shown}");
    }
}
