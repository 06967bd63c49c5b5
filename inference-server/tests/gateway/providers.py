"""Local stand-ins for external model providers, speaking each provider's documented wire format.

Every request is checked against the provider's official Python SDK types (the `openai` and
`anthropic` packages pinned in .ci/setup): the body must validate as the SDK's request
parameters (TypedDicts, validated with pydantic, unknown top-level keys refused), the key must
be in the provider's header. A request that does not is answered 400 naming what was wrong, so
a test that expects 200 fails on it. Answers are the documented samples (OpenAI's API
reference, Anthropic's Messages and streaming docs), themselves validated as the SDK's response
types before they are sent.

Routes:
  POST /openai/v1/chat/completions | /completions | /embeddings   OpenAI (Authorization: Bearer)
  POST /openai/deployments/{name}/chat/completions?api-version=V  Azure OpenAI (api-key)
  POST /anthropic/v1/messages                                     Anthropic (x-api-key,
                                                                  anthropic-version)
  GET  /calls       -> {"<route> <model>": count}
  GET  /health      -> 200

The model name picks the behaviour: `fail-500` answers 500, `rate-limited` 429 with
`retry-after: 7`, `overloaded` (Anthropic) 529; a user message starting `echo:` is answered
with the rest of it, streamed three characters per event.
"""

import argparse
import json
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import anthropic.types as A
import openai.types as O
import openai.types.chat as OC
from anthropic.types import message_create_params as amcp
from openai.types import completion_create_params as ocp
from openai.types import embedding_create_params as oep
from openai.types.chat import completion_create_params as occp
from pydantic import TypeAdapter

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--key", required=True, help="the API key every provider expects")
args = parser.parse_args()

CALLS = {}
LOCK = threading.Lock()


def check(params_type, body):
    """Validates `body` as the SDK's request TypedDict; refuses top-level keys it does not have."""
    known = set(typing.get_type_hints(params_type).keys())
    extra = sorted(set(body) - known)
    if extra:
        raise ValueError(f"keys the SDK's {params_type.__name__} does not have: {extra}")
    TypeAdapter(params_type).validate_python(body)


# --- documented samples -------------------------------------------------------------------

def openai_chat(model, text):
    answer = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None,
                        "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29},
        "service_tier": "default",
    }
    OC.ChatCompletion.model_validate(answer)
    return answer


def openai_chunks(model, text, include_usage):
    base = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
            "model": model, "system_fingerprint": "fp_44709d6fcb"}
    chunks = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                   "logprobs": None, "finish_reason": None}])]
    for i in range(0, len(text), 3):
        chunks.append(dict(base, choices=[{"index": 0, "delta": {"content": text[i:i + 3]},
                                           "logprobs": None, "finish_reason": None}]))
    chunks.append(dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                       "finish_reason": "stop"}]))
    if include_usage:
        chunks.append(dict(base, choices=[], usage={"prompt_tokens": 19, "completion_tokens": 10,
                                                    "total_tokens": 29}))
    for chunk in chunks:
        OC.ChatCompletionChunk.model_validate(chunk)
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def openai_completion(model):
    answer = {
        "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7", "object": "text_completion", "created": 1589478378,
        "model": model, "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None,
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    O.Completion.model_validate(answer)
    return answer


def openai_embeddings(model, count):
    answer = {"object": "list",
              "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292, -0.0028842222],
                        "index": i} for i in range(count)],
              "model": model, "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    O.CreateEmbeddingResponse.model_validate(answer)
    return answer


def anthropic_message(model, text):
    answer = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
        "model": model, "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503},
    }
    A.Message.model_validate(answer)
    return answer


def anthropic_events(model, text):
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message",
            "role": "assistant", "content": [], "model": model, "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    for i in range(0, len(text), 3):
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": text[i:i + 3]}}))
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 15}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    for name, event in events:
        # The SDK reads `ping` apart from its event union.
        if name != "ping":
            TypeAdapter(A.RawMessageStreamEvent).validate_python(event)
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events]


def last_user_text(messages):
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def answer_text(messages, sample):
    text = last_user_text(messages)
    return text[len("echo:"):] if text.startswith("echo:") else sample


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_events(self, events):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for event in events:
            self.wfile.write(event.encode())
            self.wfile.flush()
        self.close_connection = True

    def do_GET(self):
        if self.path == "/health":
            return self.send_json(200, {"status": "ok"})
        if self.path == "/calls":
            with LOCK:
                return self.send_json(200, dict(CALLS))
        self.send_json(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError as e:
            return self.send_json(400, {"error": {"message": f"body is not JSON: {e}"}})
        model = body.get("model", "")
        if url.path.startswith("/openai/deployments/"):
            model = url.path.split("/")[3]
        with LOCK:
            key = f"{url.path} {model}"
            CALLS[key] = CALLS.get(key, 0) + 1
        try:
            if url.path.startswith("/anthropic/"):
                return self.anthropic(url, body)
            return self.openai(url, body)
        except (ValueError, TypeError) as e:
            # pydantic's ValidationError is a ValueError.
            return self.send_json(400, {"error": {"message": f"invalid request: {e}",
                                                  "type": "invalid_request_error"}})

    def openai(self, url, body):
        azure = url.path.startswith("/openai/deployments/")
        if azure:
            if self.headers.get("api-key") != args.key:
                return self.send_json(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}})
            if not parse_qs(url.query).get("api-version"):
                return self.send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
            route = url.path.split("/", 4)[4]
            model = url.path.split("/")[3]
        else:
            given = self.headers.get("authorization", "")
            if given != f"Bearer {args.key}":
                shown = given.removeprefix("Bearer ")
                return self.send_json(401, {"error": {
                    "message": f"Incorrect API key provided: {shown[:8]}****{shown[-4:]}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
            route = url.path.removeprefix("/openai/v1/")
            model = body.get("model", "")
        if model == "fail-500":
            return self.send_json(500, {"error": {"message": "The server had an error while processing your request. Sorry about that!", "type": "server_error"}})
        if model == "rate-limited":
            return self.send_json(429, {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}, [("retry-after", "7")])
        if azure:
            body = dict(body, model=model)
        if route == "chat/completions":
            stream = bool(body.get("stream"))
            params = occp.CompletionCreateParamsStreaming if stream else occp.CompletionCreateParamsNonStreaming
            check(params, body)
            text = answer_text(body["messages"], "Hello! How can I assist you today?")
            if stream:
                include = bool((body.get("stream_options") or {}).get("include_usage"))
                return self.send_events(openai_chunks(model, text, include))
            return self.send_json(200, openai_chat(model, text))
        if route == "completions":
            check(ocp.CompletionCreateParamsNonStreaming, body)
            return self.send_json(200, openai_completion(model))
        if route == "embeddings":
            check(oep.EmbeddingCreateParams, body)
            count = len(body["input"]) if isinstance(body["input"], list) else 1
            return self.send_json(200, openai_embeddings(model, count))
        return self.send_json(404, {"error": {"message": f"Unknown request URL: POST {url.path}"}})

    def anthropic(self, url, body):
        if url.path != "/anthropic/v1/messages":
            return self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})
        if self.headers.get("x-api-key") != args.key:
            return self.send_json(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
        if not self.headers.get("anthropic-version"):
            return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"}})
        model = body.get("model", "")
        if model == "overloaded":
            return self.send_json(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        if model == "rate-limited":
            return self.send_json(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}, [("retry-after", "7")])
        stream = bool(body.get("stream"))
        check(amcp.MessageCreateParamsStreaming if stream else amcp.MessageCreateParamsNonStreaming, body)
        text = answer_text(body["messages"], "Hi! My name is Claude.")
        if stream:
            return self.send_events(anthropic_events(model, text))
        return self.send_json(200, anthropic_message(model, text))


ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
