"""A small model server for the gateway tests, standing in for an engine image.

POST /invocations          -> 200 JSON naming this server; a body containing "fail" gets a
                              plain-text 500 (as engines answer), "slow" waits 3 s first.
POST /v1/chat/completions  -> an SSE stream: one chunk, then it waits until the file named by
                              --release exists, then a second chunk, a usage-only chunk (7
                              tokens) when stream_options.include_usage is set, and [DONE].
GET  /health               -> 200.
Every request is appended to --log (one line: method path), so tests can count what arrived.
"""

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--name", required=True)
parser.add_argument("--release", default="")
parser.add_argument("--log", default="")
args = parser.parse_args()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def record(self):
        if args.log:
            with open(args.log, "a") as log:
                log.write(f"{self.command} {self.path} {self.headers.get('x-sluice-shadow', '')}\n")

    def send(self, status, content_type, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.send(200, "application/json", '{"status": "ok"}')
        else:
            self.send(404, "text/plain", "not here")

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length).decode()
        self.record()
        if self.path == "/v1/chat/completions":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.chunk('data: {"choices": [{"delta": {"content": "first"}}]}\n\n')
            while args.release and not os.path.exists(args.release):
                time.sleep(0.02)
            self.chunk('data: {"choices": [{"delta": {"content": "second"}}]}\n\n')
            try:
                options = json.loads(body).get("stream_options") or {}
            except ValueError:
                options = {}
            if options.get("include_usage"):
                # As OpenAI streams usage: one last chunk, only when asked for.
                self.chunk('data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}\n\n')
            self.chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if "fail" in body:
            self.send(500, "text/plain", "engine exploded: CUDA out of memory")
            return
        if "slow" in body:
            time.sleep(3)
        self.send(200, "application/json", json.dumps({"predictions": [args.name]}))

    def chunk(self, text):
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
# The port it got (port 0: whatever was free), announced as the data-plane servers do
# (sluice_protocol::process), so the harness never races another process for a port.
host, port = server.server_address[:2]
print(f"sluice-listening upstream {host}:{port}", flush=True)
server.serve_forever()
