#!/usr/bin/env python3
"""gRPC client for proxy tests against trefoil.test.Echo (see echo.proto).

`--check` runs all four RPCs and verifies what a transparent proxy must
preserve: unary bodies, stream message counts in both directions, and error
status, details and trailing metadata. It prints one JSON line and exits 0
only if every check passed. Without `--check` it makes one Unary call.
"""

import argparse
import json
import os
import sys
import time

try:
    import grpc
except ImportError:
    sys.exit(f"{__file__}: grpcio is not installed; run scripts/install-test-deps")

import _stubs

echo_pb2, echo_pb2_grpc = _stubs.load()


def check_unary(stub, timeout, served_by):
    reply = stub.Unary(echo_pb2.EchoRequest(message="hello"), timeout=timeout)
    served_by.add(reply.served_by)
    if reply.message != "hello":
        return f"unary echoed {reply.message!r}, want 'hello'"
    return None


def check_server_stream(stub, timeout, served_by, count):
    replies = list(stub.ServerStream(echo_pb2.EchoRequest(message="s", count=count), timeout=timeout))
    served_by.update(r.served_by for r in replies)
    got = [r.message for r in replies]
    want = [f"s-{i}" for i in range(count)]
    if got != want:
        return f"server stream gave {len(got)} messages {got[:5]!r}..., want {count}"
    return None


def check_client_stream(stub, timeout, served_by):
    parts = ["a", "b", "c", "d"]
    reply = stub.ClientStream(iter(echo_pb2.EchoRequest(message=p) for p in parts), timeout=timeout)
    served_by.add(reply.served_by)
    if reply.message != "abcd":
        return f"client stream concatenated to {reply.message!r}, want 'abcd'"
    return None


def check_fail(stub, timeout):
    try:
        stub.Fail(echo_pb2.EchoRequest(message="x"), timeout=timeout)
    except grpc.RpcError as e:
        problems = []
        if e.code() != grpc.StatusCode.NOT_FOUND:
            problems.append(f"status {e.code()}, want NOT_FOUND")
        if e.details() != "no such thing":
            problems.append(f"details {e.details()!r}, want 'no such thing'")
        trailers = dict(e.trailing_metadata() or ())
        if trailers.get("x-trailer") != "kept":
            problems.append(f"trailing metadata {trailers!r} lacks x-trailer=kept")
        return "; ".join(problems) or None
    return "Fail succeeded, want NOT_FOUND"


def abandon(stub, marker, timeout):
    """gRPC interop's cancel_after_begin: the call reaches the server, then
    the client cancels it before any response."""
    call = stub.Unary.future(echo_pb2.EchoRequest(message="sleep"))
    deadline = time.monotonic() + timeout
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            call.cancel()
            return {"ok": False, "error": f"the call did not reach the server within {timeout}s"}
        time.sleep(0.01)
    call.cancel()
    try:
        call.result(timeout=timeout)
    except grpc.FutureCancelledError:
        return {"ok": True, "code": "CANCELLED"}
    except grpc.RpcError as e:
        return {"ok": e.code() == grpc.StatusCode.CANCELLED, "code": str(e.code())}
    return {"ok": False, "error": "the cancelled call succeeded"}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT to connect to (a proxy or the server)")
    parser.add_argument("--authority", help="override :authority, e.g. to hit a host-routed proxy listener")
    parser.add_argument("--check", action="store_true", help="run and verify all four RPCs")
    parser.add_argument("--count", type=int, default=5, help="server stream length for --check")
    parser.add_argument("--message", default="hello", help="message for a plain Unary call")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per RPC and for connecting")
    parser.add_argument(
        "--cancel-after-begin",
        metavar="MARKER",
        help="call Unary 'sleep' and cancel it once the server wrote MARKER (before any response)",
    )
    parser.add_argument(
        "--sleeping-server-timeout",
        type=float,
        metavar="SECONDS",
        help="call Unary 'sleep' with this deadline and expect DEADLINE_EXCEEDED",
    )
    args = parser.parse_args()

    options = [("grpc.default_authority", args.authority)] if args.authority else []
    result = {"target": args.target}
    with grpc.insecure_channel(args.target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            result.update(ok=False, error=f"could not connect within {args.timeout}s")
            print(json.dumps(result), flush=True)
            return 2
        stub = echo_pb2_grpc.EchoStub(channel)

        if args.cancel_after_begin:
            result.update(abandon(stub, args.cancel_after_begin, args.timeout))
            print(json.dumps(result), flush=True)
            return 0 if result["ok"] else 1
        if args.sleeping_server_timeout:
            try:
                stub.Unary(echo_pb2.EchoRequest(message="sleep"), timeout=args.sleeping_server_timeout)
                result.update(ok=False, error="the sleeping call succeeded")
            except grpc.RpcError as e:
                result.update(ok=e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, code=str(e.code()))
            print(json.dumps(result), flush=True)
            return 0 if result["ok"] else 1

        if not args.check:
            try:
                reply = stub.Unary(echo_pb2.EchoRequest(message=args.message), timeout=args.timeout)
            except grpc.RpcError as e:
                result.update(ok=False, error=f"{e.code()}: {e.details()}")
                print(json.dumps(result), flush=True)
                return 1
            result.update(ok=True, message=reply.message, served_by=reply.served_by)
            print(json.dumps(result), flush=True)
            return 0

        served_by = set()
        checks = {
            "unary": lambda: check_unary(stub, args.timeout, served_by),
            "server_stream": lambda: check_server_stream(stub, args.timeout, served_by, args.count),
            "client_stream": lambda: check_client_stream(stub, args.timeout, served_by),
            "fail": lambda: check_fail(stub, args.timeout),
        }
        results = {}
        for name, run in checks.items():
            try:
                problem = run()
            except grpc.RpcError as e:
                problem = f"unexpected RPC error {e.code()}: {e.details()}"
            results[name] = problem or "ok"
    ok = all(v == "ok" for v in results.values())
    result.update(ok=ok, checks=results, served_by=sorted(served_by))
    print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
