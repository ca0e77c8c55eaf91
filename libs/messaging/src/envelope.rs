//! The event envelope: every Kafka message is an [`EventEnvelope`] around a typed payload.

use prost::Message;
pub use shop_proto::events::{EventEnvelope, TraceContext};
use uuid::Uuid;

/// An event about to be written to the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: String,
    pub envelope: EventEnvelope,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id, `occurred_at = now`, schema version 1.
    /// It correlates to itself until [`NewEvent::caused_by`] or [`NewEvent::correlation`] says otherwise.
    pub fn new(
        topic: impl Into<String>,
        event_type: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        payload: &impl Message,
    ) -> Self {
        let event_id = Uuid::now_v7().to_string();
        let now = std::time::SystemTime::now();
        Self {
            topic: topic.into(),
            envelope: EventEnvelope {
                correlation_id: event_id.clone(),
                event_id,
                event_type: event_type.into(),
                schema_version: 1,
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                occurred_at: Some(prost_types::Timestamp::from(now)),
                tenant_id: String::new(),
                trace: None,
                causation_id: String::new(),
                payload: payload.encode_to_vec(),
                choreography: None,
            },
        }
    }

    pub fn schema_version(mut self, v: u32) -> Self {
        self.envelope.schema_version = v;
        self
    }

    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.envelope.tenant_id = tenant_id.into();
        self
    }

    pub fn correlation(mut self, correlation_id: impl Into<String>) -> Self {
        self.envelope.correlation_id = correlation_id.into();
        self
    }

    /// This event was caused by `parent`: inherit its correlation, tenant and trace.
    pub fn caused_by(mut self, parent: &EventEnvelope) -> Self {
        self.envelope.causation_id = parent.event_id.clone();
        self.envelope.correlation_id = parent.correlation_id.clone();
        self.envelope.tenant_id = parent.tenant_id.clone();
        self.envelope.trace = parent.trace.clone();
        // A choreographed flow goes on through whatever it causes (see `crate::choreography`).
        self.envelope.choreography = parent.choreography.clone();
        self
    }

    pub fn event_id(&self) -> &str {
        &self.envelope.event_id
    }
}

/// Decodes the payload of `envelope` as `M`; the caller has matched `event_type` already.
pub fn decode_payload<M: Message + Default>(
    envelope: &EventEnvelope,
) -> Result<M, prost::DecodeError> {
    M::decode(envelope.payload.as_slice())
}

/// FNV-1a, 64 bit: a stable hash of the partition key, the same in every process and version.
pub fn bucket_of(key: &str, buckets: u64) -> i16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // buckets <= 64, so the remainder always fits.
    i16::try_from(hash % buckets).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_proto::events::SmokeTick;

    #[test]
    fn caused_by_inherits_correlation_and_tenant() {
        let parent = NewEvent::new("t", "a", "order", "o1", &SmokeTick { sequence: 1 })
            .tenant("acme")
            .envelope;
        let child =
            NewEvent::new("t", "b", "payment", "o1", &SmokeTick { sequence: 2 }).caused_by(&parent);
        assert_eq!(child.envelope.causation_id, parent.event_id);
        assert_eq!(child.envelope.correlation_id, parent.correlation_id);
        assert_eq!(child.envelope.tenant_id, "acme");
        assert_ne!(child.envelope.event_id, parent.event_id);
    }

    #[test]
    fn bucket_is_stable_and_in_range() {
        assert_eq!(bucket_of("order-42", 64), bucket_of("order-42", 64));
        // A fixed value: changing the hash would reorder events already waiting in outboxes.
        assert_eq!(bucket_of("order-42", 64), 20);
        for i in 0..1000 {
            let b = bucket_of(&format!("k{i}"), 64);
            assert!((0..64).contains(&b));
        }
    }
}
