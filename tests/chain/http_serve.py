"""Runs a test function's HTTP handler on a free loopback port.

Prints `listening on ADDR` (flushed) once it accepts connections, which is
what the test harness waits for, then serves until interrupted.
"""

from http.server import ThreadingHTTPServer


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
