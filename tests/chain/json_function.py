#!/usr/bin/env python3
"""A network function speaking Trefoil's HTTP/JSON call-out, for chain tests.

It decides on what the proxy sent:
- path starting with the deny prefix (`--deny-prefix`, default /deny): deny with 451, a reason and an `x-denied-by` header;
- a request header `x-fn-delay: SECONDS`: answer that much later (a slow function);
- anything else: allow, setting `x-checked-by` (its name), `x-seen-cnf`,
  `x-seen-trace` (from the payload), `x-seen-body` (the body it was sent, if
  any) and removing `x-secret`.
Every verdict publishes an event `checked` (or the name given by `--event`).
`GET /calls` answers the calls received so far, as a JSON list of
`{cnf, function, path}`.

Prints `listening on ADDR` (flushed) once it accepts connections.
"""

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "fn"
    deny_prefix = "/deny"
    event = "checked"

    calls = []

    def log_message(self, *_):
        pass

    def do_GET(self):
        body = json.dumps(Handler.calls).encode()
        self.send_response(200 if self.path == "/calls" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        call = json.loads(self.rfile.read(length))
        # list.append is atomic under the GIL: threads may record concurrently.
        Handler.calls.append({"cnf": call["cnf"], "function": call["function"], "path": call["path"]})
        events = [{"name": self.event, "data": {"path": call["path"]}}]
        delay = call["headers"].get("x-fn-delay")
        if delay:
            time.sleep(float(delay))
        if call["path"].startswith(self.deny_prefix):
            verdict = {"verdict": "deny", "status": 451, "reason": "blocked by policy\n",
                       "setHeaders": {"x-denied-by": self.name}, "events": events}
        else:
            set_headers = {
                "x-checked-by": self.name,
                "x-seen-cnf": call["cnf"],
                "x-seen-trace": call["traceId"],
                # The header the proxy adds must agree with the payload.
                "x-seen-cnf-header": self.headers.get("x-trefoil-cnf", ""),
            }
            if "body" in call:
                set_headers["x-seen-body"] = call["body"]
            verdict = {"verdict": "allow", "setHeaders": set_headers, "removeHeaders": ["x-secret"], "events": events}
        body = json.dumps(verdict).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="fn")
    parser.add_argument("--deny-prefix", default="/deny")
    parser.add_argument("--event", default="checked")
    args = parser.parse_args()
    Handler.name = args.name
    Handler.deny_prefix = args.deny_prefix
    Handler.event = args.event
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
