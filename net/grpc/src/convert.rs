//! Events between the wire messages and the model. The typed fields the
//! model's `Headers` has no place for (SLA class, business id, deadline)
//! travel in the log as reserved user headers, named below.

use bytes::Bytes;
use sluice_model::event::{Event, Headers, ProducerStamp, Sensitivity};
use tonic::Status;

use crate::proto;

/// The user header holding an event's SLA class: `P0`, `P1` or `P2`.
pub const HEADER_SLA_CLASS: &str = "sluice-sla";
/// The user header holding an event's business id (raw bytes), when it
/// is not the key.
pub const HEADER_BUSINESS_ID: &str = "sluice-business-id";
/// The user header holding an event's deadline: ms since the Unix epoch,
/// in decimal ASCII.
pub const HEADER_DEADLINE_MS: &str = "sluice-deadline-ms";

/// The prefix of the header names the typed fields use.
const RESERVED_PREFIX: &str = "sluice-";

/// The model's event for a published one; INVALID_ARGUMENT naming the
/// event's index if it has no producer stamp or uses a reserved header.
pub(crate) fn event(index: usize, event: proto::Event) -> Result<Event, Status> {
    let invalid = |what: String| Status::invalid_argument(format!("event {index}: {what}"));
    let producer = event.producer.ok_or_else(|| {
        invalid("no producer stamp: open a session with InitProducer and stamp every event".into())
    })?;
    let mut user = Vec::with_capacity(event.headers.len() + 3);
    for header in event.headers {
        if header.name.starts_with(RESERVED_PREFIX) {
            return Err(invalid(format!(
                "header {:?}: names starting with {RESERVED_PREFIX:?} are reserved; use the \
                 event's typed fields",
                header.name
            )));
        }
        user.push((header.name, Bytes::from(header.value)));
    }
    let sla = match proto::SlaClass::try_from(event.sla_class) {
        Ok(proto::SlaClass::Unspecified) => None,
        Ok(proto::SlaClass::P0) => Some("P0"),
        Ok(proto::SlaClass::P1) => Some("P1"),
        Ok(proto::SlaClass::P2) => Some("P2"),
        Err(_) => return Err(invalid(format!("unknown SLA class {}", event.sla_class))),
    };
    if let Some(class) = sla {
        user.push((
            HEADER_SLA_CLASS.to_owned(),
            Bytes::from_static(class.as_bytes()),
        ));
    }
    if !event.business_id.is_empty() && event.business_id != event.key {
        user.push((
            HEADER_BUSINESS_ID.to_owned(),
            Bytes::from(event.business_id),
        ));
    }
    if event.deadline_ms != 0 {
        user.push((
            HEADER_DEADLINE_MS.to_owned(),
            Bytes::from(event.deadline_ms.to_string()),
        ));
    }
    let sensitivity = match proto::Sensitivity::try_from(event.sensitivity) {
        Ok(proto::Sensitivity::Public) => Sensitivity::Public,
        Ok(proto::Sensitivity::Internal) => Sensitivity::Internal,
        Ok(proto::Sensitivity::Confidential) => Sensitivity::Confidential,
        Ok(proto::Sensitivity::Restricted) => Sensitivity::Restricted,
        Err(_) => {
            return Err(invalid(format!(
                "unknown sensitivity {}",
                event.sensitivity
            )));
        }
    };
    Ok(Event {
        topic: event.topic,
        key: Bytes::from(event.key),
        payload: Bytes::from(event.payload),
        headers: Headers {
            event_type: event.event_type,
            schema_version: event.schema_version,
            content_type: event.content_type,
            traceparent: (!event.traceparent.is_empty()).then_some(event.traceparent),
            sensitivity,
            user,
        },
        producer: ProducerStamp {
            id: producer.id,
            epoch: producer.epoch,
            sequence: producer.sequence,
        },
        partition: event.partition,
        timestamp_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> proto::Event {
        proto::Event {
            topic: "orders".into(),
            partition: 2,
            key: b"order-1".to_vec(),
            payload: b"{}".to_vec(),
            headers: vec![proto::Header {
                name: "tenant".into(),
                value: b"acme".to_vec(),
            }],
            event_type: "order.placed".into(),
            schema_version: 3,
            content_type: "application/json".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            sla_class: proto::SlaClass::P0 as i32,
            business_id: b"customer-9".to_vec(),
            deadline_ms: 1_700_000_000_000,
            producer: Some(proto::ProducerStamp {
                id: 4,
                epoch: 1,
                sequence: 17,
            }),
            sensitivity: proto::Sensitivity::Confidential as i32,
            timestamp_ms: 5,
        }
    }

    #[test]
    fn every_field_reaches_the_model() {
        let event = event(0, published()).expect("valid");
        assert_eq!(event.topic, "orders");
        assert_eq!(event.partition, 2);
        assert_eq!(&event.key[..], b"order-1");
        assert_eq!(event.headers.event_type, "order.placed");
        assert_eq!(event.headers.schema_version, 3);
        assert_eq!(event.headers.content_type, "application/json");
        assert!(event.headers.traceparent.is_some());
        assert_eq!(event.headers.sensitivity, Sensitivity::Confidential);
        assert_eq!(
            event.producer,
            ProducerStamp {
                id: 4,
                epoch: 1,
                sequence: 17
            }
        );
        let header = |name: &str| {
            event
                .headers
                .user
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("tenant").as_deref(), Some(&b"acme"[..]));
        assert_eq!(header(HEADER_SLA_CLASS).as_deref(), Some(&b"P0"[..]));
        assert_eq!(
            header(HEADER_BUSINESS_ID).as_deref(),
            Some(&b"customer-9"[..])
        );
        assert_eq!(
            header(HEADER_DEADLINE_MS).as_deref(),
            Some(&b"1700000000000"[..])
        );
    }

    #[test]
    fn defaults_add_no_reserved_header() {
        let mut bare = published();
        bare.sla_class = 0;
        bare.business_id = bare.key.clone();
        bare.deadline_ms = 0;
        bare.traceparent.clear();
        let event = event(0, bare).expect("valid");
        assert_eq!(event.headers.user.len(), 1);
        assert_eq!(event.headers.traceparent, None);
    }

    #[test]
    fn a_missing_stamp_or_a_reserved_header_is_invalid() {
        let mut unstamped = published();
        unstamped.producer = None;
        let status = event(3, unstamped).expect_err("no stamp");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("event 3:"), "{status:?}");
        let mut reserved = published();
        reserved.headers.push(proto::Header {
            name: HEADER_SLA_CLASS.into(),
            value: b"P2".to_vec(),
        });
        let status = event(0, reserved).expect_err("reserved header");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
