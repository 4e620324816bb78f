#!/usr/bin/env python3
"""gRPC upstream for proxy tests: serves trefoil.test.Echo (see echo.proto).

Prints `listening on ADDR` (flushed) once it accepts connections, so callers
can wait on stdout the same way they do for trefoil-testserver.
"""

import argparse
import signal
import sys
import threading
import time
from concurrent import futures

try:
    import grpc
except ImportError:
    sys.exit(f"{__file__}: grpcio is not installed; run scripts/install-test-deps")

import _stubs

echo_pb2, echo_pb2_grpc = _stubs.load()


class Echo(echo_pb2_grpc.EchoServicer):
    def __init__(self, name, sleep_marker):
        self.name = name
        self.sleep_marker = sleep_marker

    def _reply(self, message):
        return echo_pb2.EchoReply(message=message, served_by=self.name)

    def _tag(self, context):
        # Lets a test see which upstream answered without decoding the body.
        context.send_initial_metadata((("x-served-by", self.name),))

    def Unary(self, request, context):
        if request.message == "sleep":
            return self._sleep(context)
        self._tag(context)
        return self._reply(request.message)

    def _sleep(self, context):
        # The interop suite's sleeping server: no headers, no answer, until
        # the caller gives up. The marker file tells a test the call arrived.
        if self.sleep_marker:
            with open(self.sleep_marker, "w") as f:
                f.write("sleeping\n")
        for _ in range(600):
            if not context.is_active():
                break
            time.sleep(0.05)
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "slept too long")

    def ServerStream(self, request, context):
        self._tag(context)
        for i in range(request.count):
            yield self._reply(f"{request.message}-{i}")

    def ClientStream(self, request_iterator, context):
        self._tag(context)
        return self._reply("".join(r.message for r in request_iterator))

    def Fail(self, request, context):
        self._tag(context)
        # Trailers on an error are what proxies most often drop.
        context.set_trailing_metadata((("x-trailer", "kept"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 picks one")
    parser.add_argument("--name", default="grpc-server", help="reported as served_by")
    parser.add_argument("--sleep-marker", help="file written when a Unary 'sleep' call arrives")
    args = parser.parse_args()

    host, sep, _ = args.listen.rpartition(":")
    if not sep or not host:
        parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(args.name, args.sleep_marker), server)
    try:
        port = server.add_insecure_port(args.listen)
    except RuntimeError as e:
        print(f"grpc_server: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 1
    if port == 0:
        print(f"grpc_server: cannot listen on {args.listen}", file=sys.stderr)
        return 1
    server.start()

    stopped = threading.Event()

    def stop(*_):
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {host}:{port}", flush=True)
    # A bounded wait keeps the main thread returning to the interpreter, so
    # the signal handler runs promptly.
    while not stopped.wait(0.2):
        pass
    server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
