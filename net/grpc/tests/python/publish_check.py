"""A gRPC client nobody on the project wrote (grpcio, with stubs that
grpcio-tools generates from net/grpc/proto at run time) drives a node's
gRPC listener: health and reflection, Admin, an idempotent producer
session, N events in batches, one batch resent, and the error codes.

Usage: publish_check.py PROTO_DIR WORK_DIR LEADER_GRPC OTHER_GRPC N OUT_JSON TOKEN

LEADER_GRPC is an initialised node's gRPC address (Anonymous is a
superuser there); OTHER_GRPC an uninitialised node's started with
`--superuser User:admin`. TOKEN authenticates as User:bob on the
first node, whose rules let bob publish to py-orders only and whose
quota lets bob make one request a second. Writes the acknowledged events to OUT_JSON as
[{"payload", "partition", "offset"}] for the caller to read back.
Any failed check raises (exit status 1)."""

import json
import os
import sys
import time

from grpc_tools import protoc


def generate(proto_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    files = [f"sluice/v1/{name}.proto" for name in ("event", "publisher", "admin")]
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + files
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code}) on {files} in {proto_dir}")
    sys.path.insert(0, out_dir)


def expect_code(call, code, what):
    import grpc

    try:
        call()
    except grpc.RpcError as error:
        if error.code() != code:
            raise AssertionError(f"{what}: expected {code}, got {error.code()}: {error.details()}")
        return error
    raise AssertionError(f"{what}: expected {code}, the call succeeded")


def health(channel, service):
    """grpc.health.v1.Health/Check, encoded by hand: HealthCheckRequest
    {service = 1} and HealthCheckResponse {status = 1} (SERVING = 1)."""
    name = service.encode()
    request = (b"\x0a" + bytes([len(name)]) + name) if name else b""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    answer = check(request, timeout=10)
    assert answer == b"\x08\x01", f"health of {service!r}: {answer!r}, not SERVING"


def reflected_services(channel):
    """grpc.reflection.v1 list_services (field 7 of the request)."""
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    return b"".join(info(iter([b"\x3a\x00"]), timeout=10))


def main():
    proto_dir, work_dir, leader, other, count, out_json, token = sys.argv[1:8]
    count = int(count)
    generate(proto_dir, os.path.join(work_dir, "gen"))
    import grpc
    from sluice.v1 import admin_pb2, admin_pb2_grpc, event_pb2, publisher_pb2, publisher_pb2_grpc

    channel = grpc.insecure_channel(leader)
    grpc.channel_ready_future(channel).result(timeout=30)
    health(channel, "")
    health(channel, "sluice.v1.Publisher")
    health(channel, "sluice.v1.Admin")
    listing = reflected_services(channel)
    for service in (b"sluice.v1.Publisher", b"sluice.v1.Admin", b"grpc.health.v1.Health"):
        assert service in listing, f"reflection lists no {service}: {listing!r}"

    admin = admin_pb2_grpc.AdminStub(channel)
    publisher = publisher_pb2_grpc.PublisherStub(channel)
    status = admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)
    assert status.role == "leader", status
    assert status.HasField("leader") and status.leader.id == status.node_id, status

    partitions = 4
    topic = "py-orders"
    admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=partitions), timeout=30)
    # Created again identically: succeeds (idempotent).
    admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=partitions), timeout=30)
    expect_code(
        lambda: admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=7), timeout=30),
        grpc.StatusCode.FAILED_PRECONDITION,
        "the same topic with another partition count",
    )
    names = [t.name for t in admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=10).topics]
    assert topic in names, names

    session = publisher.InitProducer(publisher_pb2.InitProducerRequest(name="py-producer"), timeout=30)
    stamp_of = lambda sequence: event_pb2.ProducerStamp(
        id=session.producer_id, epoch=session.epoch, sequence=sequence
    )
    next_sequence = [0] * partitions
    batches = []
    for start in range(0, count, 100):
        batch = []
        for i in range(start, min(start + 100, count)):
            partition = i % partitions
            batch.append(
                event_pb2.Event(
                    topic=topic,
                    partition=partition,
                    key=f"k{i}".encode(),
                    payload=f"e{i}".encode(),
                    headers=[event_pb2.Header(name="origin", value=b"python")],
                    event_type="order.placed",
                    schema_version=2,
                    content_type="text/plain",
                    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    sla_class=event_pb2.SLA_CLASS_P0,
                    business_id=f"order-{i}".encode(),
                    deadline_ms=4_000_000_000_000,
                    producer=stamp_of(next_sequence[partition]),
                )
            )
            next_sequence[partition] += 1
        batches.append(batch)

    acked = []
    for batch in batches:
        answer = publisher.Publish(publisher_pb2.PublishRequest(events=batch), timeout=60)
        assert len(answer.results) == len(batch), answer
        for event, result in zip(batch, answer.results):
            assert result.WhichOneof("outcome") == "appended", result
            assert not result.appended.duplicate, result
            assert result.appended.partition == event.partition, result
            acked.append(
                {
                    "payload": event.payload.decode(),
                    "partition": result.appended.partition,
                    "offset": result.appended.offset,
                }
            )
    places = {(a["partition"], a["offset"]) for a in acked}
    assert len(places) == count, f"{count} events acknowledged at {len(places)} distinct places"

    # The same batch again, same stamps: every event answered as a
    # duplicate at its original place, nothing appended.
    again = publisher.Publish(publisher_pb2.PublishRequest(events=batches[3]), timeout=60)
    for index, result in enumerate(again.results):
        original = acked[300 + index]
        assert result.WhichOneof("outcome") == "appended", result
        assert result.appended.duplicate, f"resent event {index} not deduplicated: {result}"
        assert (result.appended.partition, result.appended.offset) == (
            original["partition"],
            original["offset"],
        ), (result, original)

    # A gap in the sequence and an unknown topic are refused per event;
    # an unstamped event is an invalid argument.
    gap = event_pb2.Event(topic=topic, partition=0, payload=b"gap", producer=stamp_of(next_sequence[0] + 5))
    unknown = event_pb2.Event(topic="no-such-topic", payload=b"x", producer=stamp_of(0))
    refused = publisher.Publish(publisher_pb2.PublishRequest(events=[gap, unknown]), timeout=60)
    for result in refused.results:
        assert result.WhichOneof("outcome") == "refused" and result.refused.reason, result
    expect_code(
        lambda: publisher.Publish(
            publisher_pb2.PublishRequest(events=[event_pb2.Event(topic=topic, payload=b"x")]), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "an event without a producer stamp",
    )

    described = admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=topic), timeout=10)
    held = sum(r.next - r.first for r in described.ranges)
    assert described.partitions == partitions and held == count, described
    expect_code(
        lambda: admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="no-such-topic"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "describing a topic that does not exist",
    )

    # bob, by his bearer token: one request a second, publish on
    # py-orders only.
    bob = [("authorization", f"Bearer {token}")]
    admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), metadata=bob, timeout=10)
    throttled = expect_code(
        lambda: admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), metadata=bob, timeout=10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "bob's second call within a second",
    )
    trailing = dict(throttled.trailing_metadata())
    wait_ms = int(trailing["retry-after-ms"])
    assert 0 < wait_ms <= 1000, trailing

    def as_bob(call):
        """Sits out bob's quota, a bounded number of times."""
        for _ in range(10):
            try:
                return call()
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                time.sleep(int(dict(error.trailing_metadata())["retry-after-ms"]) / 1000)
        raise AssertionError("bob stayed throttled for 10 waits")

    forbidden = event_pb2.Event(topic="elsewhere", payload=b"x", producer=stamp_of(0))
    denied = expect_code(
        lambda: as_bob(
            lambda: publisher.Publish(publisher_pb2.PublishRequest(events=[forbidden]), metadata=bob, timeout=10)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "bob publishing where no rule allows him",
    )
    assert "User:bob" in denied.details(), denied.details()
    mine = event_pb2.Event(
        topic=topic, partition=0, payload=b"from-bob", producer=stamp_of(next_sequence[0])
    )
    answer = as_bob(
        lambda: publisher.Publish(publisher_pb2.PublishRequest(events=[mine]), metadata=bob, timeout=30)
    )
    result = answer.results[0]
    assert result.WhichOneof("outcome") == "appended" and not result.appended.duplicate, result
    acked.append({"payload": "from-bob", "partition": 0, "offset": result.appended.offset})

    # The other node: uninitialised (no leader), Anonymous no superuser.
    other_channel = grpc.insecure_channel(other)
    grpc.channel_ready_future(other_channel).result(timeout=30)
    health(other_channel, "")
    other_admin = admin_pb2_grpc.AdminStub(other_channel)
    other_publisher = publisher_pb2_grpc.PublisherStub(other_channel)
    denied = expect_code(
        lambda: other_admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=1), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "Anonymous creating a topic where no rule allows it",
    )
    assert "Anonymous" in denied.details(), denied.details()
    expect_code(
        lambda: other_publisher.Publish(
            publisher_pb2.PublishRequest(events=[batches[0][0]]), timeout=10
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "Anonymous publishing where no rule allows it",
    )
    expect_code(
        lambda: other_publisher.InitProducer(publisher_pb2.InitProducerRequest(), timeout=10),
        grpc.StatusCode.UNAVAILABLE,
        "a producer session on a node that knows no leader",
    )
    expect_code(
        lambda: other_admin.ClusterStatus(
            admin_pb2.ClusterStatusRequest(), metadata=[("authorization", "Bearer nonsense")], timeout=10
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "a malformed bearer token",
    )
    other_status = other_admin.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=10)
    assert not other_status.HasField("leader"), other_status

    with open(out_json, "w") as out:
        json.dump(acked, out)
    print(f"python: {count} events acknowledged, batch 4 resent and deduplicated, error codes as documented")


if __name__ == "__main__":
    main()
