#!/usr/bin/env python3
"""A slow inline network function, for chain tests: an HTTP reverse proxy
that waits `--delay` seconds, then passes the request on to the address in
`x-trefoil-next-hop` with the headers and body it received, and the answer
back.

Prints `listening on ADDR` (flushed) once it accepts connections.
"""

import argparse
import http.client
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from http_serve import serve

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0

    def log_message(self, *_):
        pass

    def relay(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length) if length else None
        time.sleep(self.delay)
        next_hop = urllib.parse.urlsplit(self.headers["x-trefoil-next-hop"])
        conn = http.client.HTTPConnection(next_hop.hostname, next_hop.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            # The first leg gave up and the proxy may have closed on us: nothing to answer.
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_DELETE = relay


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    Handler.delay = args.delay
    return serve(Handler)


if __name__ == "__main__":
    sys.exit(main())
