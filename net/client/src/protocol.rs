//! The client protocol: what clients (the CLI, applications, the Jepsen
//! runner, benchmarks) ask a node, on the same frames as Raft's messages.
//!
//! Every client request is one frame of kind [`MessageKind::Client`](sluice_model::transport::MessageKind::Client), group 0,
//! carrying a postcard-encoded [`ClientRequest`]; the answer is a
//! postcard-encoded [`ClientResponse`]. Requests that change the cluster go
//! through the leader: any other node answers [`ClientResponse::NotLeader`]
//! with the leader's id and address when it knows them, and the client
//! follows. Every request is safe to retry after an ambiguous failure:
//! publishes carry producer stamps the state machine deduplicates, offset
//! commits are idempotent, and a retried `InitProducer` only wastes an id.

use serde::{Deserialize, Serialize};

use sluice_model::event::{EVENT_SIZE_MAX, Event, Headers, ProducerStamp};
use sluice_model::security::{Denied, Quota, Rule, SecurityOp, Tenant};
use sluice_model::state::{Op, Response};
use sluice_model::transport::NodeId;

use crate::wire::BODY_SIZE_MAX;

/// The Raft group client frames name (one group today).
pub const CLIENT_GROUP: u32 = 0;

pub use sluice_model::constants::FETCH_EVENTS_MAX;

pub use sluice_model::constants::FETCH_WAIT_MS_MAX;

pub use sluice_model::constants::FETCH_BYTES_MAX;

pub use sluice_model::constants::PUBLISH_BYTES_MAX;

/// Bytes a response or request takes besides its events: the variant, the
/// vector's length, a fetch's offsets.
const MESSAGE_OVERHEAD_MAX: usize = 64;

// A fetched event's encoding is at most twice its record's size: its fixed
// fields and length prefixes take at most 63 bytes, against the record's
// 56-byte header plus a topic name of 1 byte or more, and the variable
// fields are the same bytes in both. One fetch's records total at most the
// larger of the byte bound and one event.
const _: () = assert!(
    2 * max(FETCH_BYTES_MAX as usize, EVENT_SIZE_MAX) + MESSAGE_OVERHEAD_MAX <= BODY_SIZE_MAX
);
const _: () = assert!(PUBLISH_BYTES_MAX + MESSAGE_OVERHEAD_MAX <= BODY_SIZE_MAX);
const _: () = assert!(EVENT_SIZE_MAX * 2 <= PUBLISH_BYTES_MAX);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

pub use sluice_model::constants::CATCH_UP_WAIT_MS_MAX;

pub use sluice_model::constants::LEARNER_LAG_MAX;

/// What a client asks a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Who leads, who is a member, which topics exist; any node answers.
    Metadata,
    /// Initialise a new cluster with these voters (id, address); sent to
    /// one of them, once.
    Initialize {
        /// The first members.
        members: Vec<(NodeId, String)>,
    },
    /// Add a running node: refused at once for id 0, a member's id or
    /// address, or a node that does not answer as `id` (unreachable, a
    /// wrong cluster secret, another node); else it joins as a learner, and
    /// once its log is within [`LEARNER_LAG_MAX`] entries of the leader's
    /// it becomes a voter. A learner that does not catch up within
    /// `catch_up_ms` is removed again and the request refused.
    AddNode {
        /// Its id.
        id: NodeId,
        /// Its address.
        address: String,
        /// How long it may take to catch up, in milliseconds (at most
        /// [`CATCH_UP_WAIT_MS_MAX`]).
        catch_up_ms: u32,
    },
    /// Remove a node from the voters and the cluster.
    RemoveNode {
        /// Its id.
        id: NodeId,
    },
    /// Propose one state-machine operation: create a topic, init a
    /// producer, join or leave a group, a group heartbeat (members that
    /// send none for `SESSION_TIMEOUT_MS` are removed), commit offsets, or
    /// a transaction.
    /// Publishes use [`ClientRequest::Publish`]; internal operations are
    /// refused.
    Write(Op),
    /// Append events stamped by an idempotent producer (id, epoch,
    /// sequence, partition); the node batches them with everyone else's.
    Publish(Vec<Event>),
    /// Read one partition from an offset, waiting up to `wait_ms` for
    /// events when there are none yet; at most [`FETCH_BYTES_MAX`] bytes
    /// of events ([`ClientRequest::FetchBounded`] asks for fewer).
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The first offset wanted.
        offset: u64,
        /// Events wanted at most (capped at [`FETCH_EVENTS_MAX`]).
        max: u32,
        /// How long to wait for a first event (capped at
        /// [`FETCH_WAIT_MS_MAX`]).
        wait_ms: u32,
    },
    /// A group's generation, the member's assignment and the group's
    /// committed offsets for it.
    Group {
        /// Group.
        group: String,
        /// Member.
        member: String,
    },
    /// The offset a group committed for a partition, if any.
    Committed {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// [`ClientRequest::Fetch`] with a bound on bytes too. The last
    /// variant, so that [`ClientRequest::Fetch`] and every other request
    /// keep their encoding (see `WIRE.md`).
    FetchBounded {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The first offset wanted.
        offset: u64,
        /// Events wanted at most (capped at [`FETCH_EVENTS_MAX`]).
        max: u32,
        /// Bytes of events wanted at most, counted as their records in
        /// the log (capped at [`FETCH_BYTES_MAX`]); the first event comes
        /// whatever its size.
        max_bytes: u32,
        /// How long to wait for a first event (capped at
        /// [`FETCH_WAIT_MS_MAX`]).
        wait_ms: u32,
    },
    /// The chain hash this node stores at log index `index`, if it has
    /// applied that entry and still holds it: what nodes compare to find a
    /// peer whose log was changed (`ChainCheck` in `sluice-server`).
    /// Answered with [`ClientResponse::ChainHash`].
    ChainHash {
        /// The log index (a checkpoint's).
        index: u64,
    },
    /// Change the security settings: a rule, a token, a tenant, a quota.
    /// Needs `admin` on the cluster; the node writes the change as an
    /// admin entry naming the caller's principal. Answered `Written`.
    Security(SecurityOp),
    /// One page of the security settings, from item `from` of `section`
    /// ([`SECURITY_PAGE_ITEMS_MAX`] items at most). Needs `admin` on the
    /// cluster. Token pages hold no salts or hashes.
    SecurityList {
        /// Which settings.
        section: SecuritySection,
        /// The first item wanted (0, then the answer's `next`).
        from: u32,
    },
}

/// Items of the security settings one [`ClientRequest::SecurityList`]
/// answer carries at most: a page of rules (two names of at most 255
/// bytes each) stays far below a frame.
pub const SECURITY_PAGE_ITEMS_MAX: u32 = 1000;

const _: () = assert!(
    SECURITY_PAGE_ITEMS_MAX as usize * (4 * sluice_model::constants::PRINCIPAL_NAME_MAX + 64)
        + MESSAGE_OVERHEAD_MAX
        <= BODY_SIZE_MAX
);

/// A part of the security settings, for listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecuritySection {
    /// The access-control rules.
    Rules,
    /// The tokens (id, owner, creation time, revoked), never their hashes.
    Tokens,
    /// The tenants.
    Tenants,
    /// Which user principal is in which tenant.
    Members,
    /// The quotas.
    Quotas,
}

/// A token as an admin may list it: no salt, no hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// The user principal it authenticates as.
    pub principal: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// One page of a [`SecuritySection`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityItems {
    /// Rules, in order.
    Rules(Vec<Rule>),
    /// Tokens, by id.
    Tokens(Vec<TokenInfo>),
    /// Tenants, by name.
    Tenants(Vec<Tenant>),
    /// (user principal's name, tenant's name), by principal.
    Members(Vec<(String, String)>),
    /// (user principal's name, its quota), by principal.
    Quotas(Vec<(String, Quota)>),
}

impl SecurityItems {
    /// How many items the page holds.
    pub fn len(&self) -> usize {
        match self {
            SecurityItems::Rules(items) => items.len(),
            SecurityItems::Tokens(items) => items.len(),
            SecurityItems::Tenants(items) => items.len(),
            SecurityItems::Members(items) => items.len(),
            SecurityItems::Quotas(items) => items.len(),
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The cluster as this node sees it.
    Metadata(Metadata),
    /// The request was carried out.
    Done,
    /// The state machine's answer to a [`ClientRequest::Write`].
    Written(Response),
    /// One outcome per published event, in order.
    Published(Vec<PublishOutcome>),
    /// Events of one partition.
    Fetched {
        /// The events, in offset order.
        events: Vec<FetchedEvent>,
        /// The offset to fetch next.
        next: u64,
        /// The partition's first retained and next offsets.
        range: (u64, u64),
    },
    /// A group as it stands.
    Group {
        /// Its generation.
        generation: u64,
        /// The member's partitions with the group's committed offset for
        /// each (`None`: nothing committed yet).
        assignment: Vec<(String, u32, Option<u64>)>,
    },
    /// A group's committed offset (`None`: nothing committed).
    Committed(Option<u64>),
    /// This node is not the leader; nothing was done. Ask the leader, when
    /// named, or retry shortly (an election is under way).
    NotLeader {
        /// The leader's id and address, when known.
        leader: Option<(NodeId, String)>,
    },
    /// The request was refused or failed; `retry` says whether sending it
    /// again may succeed (to this or another node).
    Error {
        /// What went wrong and what to do.
        message: String,
        /// Whether a retry may succeed.
        retry: bool,
    },
    /// The answer to [`ClientRequest::ChainHash`]: the hash, or `None`
    /// when this node has not applied that index or no longer holds it.
    ChainHash(Option<[u8; 32]>),
    /// The caller's principal may not do this; nothing was done. Names
    /// the principal, the operation and the resource. A name outside the
    /// caller's tenant is refused the same way whether it exists or not.
    Denied(Denied),
    /// The caller's principal is over its quota; nothing was done. Send
    /// the same request again after `retry_after_ms` (at most
    /// `THROTTLE_WAIT_MS_MAX`).
    Throttled {
        /// How long to wait before sending it again, in milliseconds.
        retry_after_ms: u64,
    },
    /// A page of the security settings.
    SecurityPage {
        /// The items.
        items: SecurityItems,
        /// Where the next page starts; `None` after the last.
        next: Option<u32>,
    },
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The node answering.
    pub node_id: NodeId,
    /// Its role: leader, follower, candidate, learner, or shutdown.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader, when known: id and address.
    pub leader: Option<(NodeId, String)>,
    /// Members: id, address, and whether it votes.
    pub members: Vec<(NodeId, String, bool)>,
    /// Last log index, committed index and applied index on this node.
    pub log: (Option<u64>, Option<u64>, Option<u64>),
    /// Topics and their partition counts.
    pub topics: Vec<(String, u32)>,
    /// This node's wall clock when it answered, in milliseconds since the
    /// Unix epoch: how far it is from another clock shows a skew.
    pub wall_clock_ms: u64,
}

/// What became of one published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishOutcome {
    /// Appended (or found appended before, if `duplicate`).
    Appended {
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// Whether this was a retry of an event already in the log.
        duplicate: bool,
    },
    /// Refused; nothing was appended for it.
    Refused {
        /// Why.
        message: String,
    },
}

/// One event read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedEvent {
    /// Offset in its partition.
    pub offset: u64,
    /// Key.
    pub key: bytes::Bytes,
    /// Payload.
    pub payload: bytes::Bytes,
    /// Headers.
    pub headers: Headers,
    /// The producer's stamp.
    pub producer: ProducerStamp,
    /// The leader's publish time.
    pub timestamp_ms: u64,
}

/// The bytes `event` adds to a [`ClientRequest::Publish`]; a request's
/// events take at most [`PUBLISH_BYTES_MAX`] of them.
pub fn publish_size(event: &Event) -> usize {
    postcard::experimental::serialized_size(event).expect("events encode into memory")
}

/// Encodes a message body.
pub fn encode<M: Serialize>(message: &M) -> bytes::Bytes {
    bytes::Bytes::from(postcard::to_allocvec(message).expect("messages encode into memory"))
}

/// Decodes a message body; the error names what was expected.
pub fn decode<M: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<M, String> {
    postcard::from_bytes(body).map_err(|error| {
        format!("a {what} does not decode: {error}; do both sides run the same version?")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            ClientRequest::Metadata,
            ClientRequest::Fetch {
                topic: "t".into(),
                partition: 2,
                offset: 7,
                max: 10,
                wait_ms: 100,
            },
            ClientRequest::Publish(vec![Event {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(b"x"),
                ..Event::default()
            }]),
        ];
        for request in requests {
            let decoded: ClientRequest = decode(&encode(&request), "request").unwrap();
            assert_eq!(decoded, request);
        }
        let response = ClientResponse::NotLeader {
            leader: Some((2, "127.0.0.1:7002".into())),
        };
        let decoded: ClientResponse = decode(&encode(&response), "response").unwrap();
        assert_eq!(decoded, response);
        let garbage: Result<ClientRequest, _> = decode(&[0xff, 0xff, 0xff], "request");
        assert!(garbage.unwrap_err().contains("does not decode"));
    }

    /// `WIRE.md` promises that a fetch keeps the encoding older nodes and
    /// clients know, and that the bounded fetch is a new last variant.
    #[test]
    fn fetch_keeps_its_encoding_and_the_bounded_fetch_comes_last() {
        let fetch = ClientRequest::Fetch {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            max: 10,
            wait_ms: 100,
        };
        assert_eq!(&encode(&fetch)[..], &[6, 1, b't', 2, 7, 10, 100]);
        let bounded = ClientRequest::FetchBounded {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            max: 10,
            max_bytes: 1000,
            wait_ms: 100,
        };
        assert_eq!(
            &encode(&bounded)[..],
            &[9, 1, b't', 2, 7, 10, 0xe8, 0x07, 100]
        );
        let committed = ClientRequest::Committed {
            group: String::new(),
            topic: String::new(),
            partition: 0,
        };
        assert_eq!(encode(&committed)[0], 8);
    }

    /// The security requests and answers came after every older variant,
    /// so those keep their encodings (`WIRE.md`).
    #[test]
    fn security_variants_come_last() {
        let change = ClientRequest::Security(SecurityOp::RevokeToken { id: "x".into() });
        assert_eq!(encode(&change)[0], 11);
        let list = ClientRequest::SecurityList {
            section: SecuritySection::Rules,
            from: 0,
        };
        assert_eq!(&encode(&list)[..], &[12, 0, 0]);
        let error = ClientResponse::Error {
            message: String::new(),
            retry: false,
        };
        assert_eq!(encode(&error)[0], 8);
        assert_eq!(encode(&ClientResponse::ChainHash(None))[0], 9);
        assert_eq!(encode(&ClientRequest::ChainHash { index: 0 })[0], 10);
        let denied = ClientResponse::Denied(Denied {
            principal: "User:a".into(),
            operation: "publish".into(),
            resource: "topic \"t\"".into(),
            reason: "no rule allows it".into(),
        });
        assert_eq!(encode(&denied)[0], 10);
        let decoded: ClientResponse = decode(&encode(&denied), "response").unwrap();
        assert_eq!(decoded, denied);
        let throttled = ClientResponse::Throttled {
            retry_after_ms: 300,
        };
        assert_eq!(&encode(&throttled)[..], &[11, 0xac, 0x02]);
        let page = ClientResponse::SecurityPage {
            items: SecurityItems::Rules(Vec::new()),
            next: None,
        };
        assert_eq!(&encode(&page)[..], &[12, 0, 0, 0]);
    }
}
