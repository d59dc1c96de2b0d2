#!/usr/bin/env python3
"""Server reflection checked by an independent client: gRPC Python with grpcio-reflection.

For each address given (host:port), as Python's reflection client, Postman or grpcui do:
  * v1alpha, through grpcio-reflection's own ProtoReflectionDescriptorDatabase: list the
    services, then resolve each one with a DescriptorPool fed by reflection (the pool asks for
    the file containing the service and for each import it lacks, on one stream per question);
  * v1 (grpcio-reflection ships only the v1alpha protos; the v1 messages are the same on the
    wire): on ONE stream, list, ask for an unknown symbol, then for the file of each service;
    the unknown symbol must come back as an in-stream error_response (NOT_FOUND) and the later
    questions must still be answered; every listed service must resolve from the files sent.

Usage: python3 tests/reflection_client.py HOST:PORT [HOST:PORT ...]
Needs: pip install grpcio grpcio-reflection
"""

import sys
import threading

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor_database import DescriptorDatabase
from grpc_reflection.v1alpha import reflection_pb2 as pb
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


def check_v1alpha(channel, addr):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = list(db.get_services())
    if "grpc.reflection.v1.ServerReflection" not in services:
        raise AssertionError(f"{addr}: v1 reflection not listed: {services}")
    pool = descriptor_pool.DescriptorPool(db)
    for name in services:
        service = pool.FindServiceByName(name)
        if not service.methods:
            raise AssertionError(f"{addr}: v1alpha: {name} has no methods")
    return services


def check_v1_one_stream(channel, addr):
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=pb.ServerReflectionRequest.SerializeToString,
        response_deserializer=pb.ServerReflectionResponse.FromString,
    )
    # The questions depend on the first answer: the request generator waits for it.
    answers = []
    got_first = threading.Event()

    def ask():
        yield pb.ServerReflectionRequest(list_services="")
        got_first.wait(10)
        yield pb.ServerReflectionRequest(file_containing_symbol="nope.v1.Nope")
        for s in answers[0].list_services_response.service:
            yield pb.ServerReflectionRequest(file_containing_symbol=s.name)

    responses = call(ask(), timeout=30)
    files = DescriptorDatabase()
    seen = set()
    count = 0
    for response in responses:
        answers.append(response)
        count += 1
        if count == 1:
            got_first.set()
            services = [s.name for s in response.list_services_response.service]
            if not services:
                raise AssertionError(f"{addr}: v1: no services listed")
            continue
        kind = response.WhichOneof("message_response")
        if count == 2:
            if kind != "error_response" or response.error_response.error_code != NOT_FOUND:
                raise AssertionError(f"{addr}: v1: unknown symbol answered {response}")
            continue
        if kind != "file_descriptor_response":
            raise AssertionError(
                f"{addr}: v1: {response.original_request.file_containing_symbol} "
                f"is listed but not described: {response}"
            )
        for raw in response.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fd.name not in seen:
                seen.add(fd.name)
                files.Add(fd)
        if count == 2 + len(services):
            break
    if count != 2 + len(services):
        raise AssertionError(f"{addr}: v1: {count} answers for {2 + len(services)} questions")
    pool = descriptor_pool.DescriptorPool(files)
    for name in services:
        pool.FindServiceByName(name)
    return services


def main(addrs):
    failed = 0
    for addr in addrs:
        with grpc.insecure_channel(addr) as channel:
            try:
                alpha = check_v1alpha(channel, addr)
                v1 = check_v1_one_stream(channel, addr)
                if sorted(alpha) != sorted(v1):
                    raise AssertionError(f"{addr}: v1 lists {v1}, v1alpha {alpha}")
                own = [s for s in v1 if not s.startswith("grpc.")]
                print(f"  {addr:<22} {len(v1)} services described (v1, v1alpha): {', '.join(own)}")
            except Exception as e:  # noqa: BLE001 - report every port, then fail
                failed += 1
                print(f"  {addr}: FAIL: {e}", file=sys.stderr)
    print(f"reflection (grpcio-reflection): {len(addrs) - failed} ports passed, {failed} failed")
    return 1 if failed or not addrs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
