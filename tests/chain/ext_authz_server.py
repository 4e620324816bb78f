#!/usr/bin/env python3
"""An external authorization service as written for Envoy: it implements
envoy.service.auth.v3.Authorization with the stubs generated from Envoy's own
API definitions (the xds-protos package) and knows nothing of Trefoil.

It allows requests carrying `authorization: Bearer good`, adding `x-user: ann`
and `x-seen-cnf` (from context_extensions) and removing `authorization`;
others are denied with 401, a `www-authenticate` header and a body.

Prints `listening on ADDR` (flushed) once it accepts connections.
"""

import signal
import sys
import threading
from concurrent import futures

try:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from envoy.config.core.v3 import base_pb2
    from google.rpc import code_pb2, status_pb2
except ImportError as e:
    sys.exit(f"{__file__}: {e}; run scripts/install-test-deps")


def header(key, value):
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


class Authorization(external_auth_pb2_grpc.AuthorizationServicer):
    def Check(self, request, context):
        http = request.attributes.request.http
        extensions = request.attributes.context_extensions
        if http.headers.get("authorization") == "Bearer good":
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.OK),
                ok_response=external_auth_pb2.OkHttpResponse(
                    headers=[
                        header("x-user", "ann"),
                        header("x-seen-cnf", extensions.get("cnf", "")),
                        header("x-seen-path", http.path),
                        header("x-seen-source", request.attributes.source.address.socket_address.address),
                    ],
                    headers_to_remove=["authorization"],
                ),
            )
        response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED))
        response.denied_response.status.code = 401
        response.denied_response.headers.append(header("www-authenticate", "Bearer"))
        response.denied_response.body = "token required\n"
        return response


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Authorization(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        print("ext_authz_server: cannot listen", file=sys.stderr)
        return 1
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    while not stopped.wait(0.2):
        pass
    server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
