"""A stand-in for one gateway instance in tests: OpenAI-shaped /v1/models and streamed
/v1/chat/completions, every request's headers appended to a JSON-lines log. A query
`?delay=SECONDS` makes it wait that long before it answers.

    python fake_gateway.py PORT LOG [NAME]
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-gateway"

    def log_message(self, *args):
        pass

    def record(self, body=None):
        with open(self.server.log, "a", encoding="utf-8") as log:
            log.write(json.dumps({"instance": self.server.name, "method": self.command, "path": self.path,
                                  "headers": dict(self.headers), "body": body}) + "\n")

    def send_json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Instance", self.server.name)
        self.end_headers()
        self.wfile.write(data)

    def delay(self):
        seconds = parse_qs(urlsplit(self.path).query).get("delay")
        if seconds:
            time.sleep(float(seconds[0]))

    def do_GET(self):
        self.record()
        self.delay()
        if self.path.rstrip("/").endswith("/models"):
            self.send_json(200, {"object": "list",
                                 "data": [{"id": "tiny-llama", "object": "model", "owned_by": "test"}]})
        else:
            self.send_json(200, {"instance": self.server.name, "path": self.path})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"raw_length": len(raw)}
        self.record(body)
        self.delay()
        if not urlsplit(self.path).path.endswith("/chat/completions"):
            self.send_json(200, {"instance": self.server.name, "received": len(raw)})
            return
        words = ["Hello", " from", " the", " fake", " gateway", "."]
        if not body.get("stream"):
            self.send_json(200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "".join(words)}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 7}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Instance", self.server.name)
        self.end_headers()
        # One chunk every 0.5 s: a buffering proxy would deliver them all at once.
        for word in words:
            chunk = {"id": "x", "object": "chat.completion.chunk", "model": body.get("model"),
                     "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            self.write_chunk(("data: %s\n\n" % json.dumps(chunk)).encode())
            time.sleep(0.5)
        self.write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.log = sys.argv[2]
    server.name = sys.argv[3] if len(sys.argv) > 3 else sys.argv[1]
    server.serve_forever()


if __name__ == "__main__":
    main()
