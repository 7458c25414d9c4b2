"""
OpenAI's HTTP API in front of a serving.Engine (Starlette, served by uvicorn): /v1/chat/completions,
/v1/completions and /v1/models as OpenAI defines them, streamed as server-sent events or not, errors in
OpenAI's JSON shape with their status, /health, and the chat page at /. What serve.py runs; the
decoding itself is the engine's.
"""

import asyncio
import hmac
import ipaddress
import json
import socket
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from gptkit.errors import UserError
from gptkit.serving import NotRunning, Params, QueueFull

PAGE = Path(__file__).with_name("chat.html")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    def __init__(self, status, message, type="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.type, self.param, self.code, self.headers = status, type, param, code, headers

    def response(self):
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _number(body, key, default, low, high, kind=float):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
            or not low <= value <= high:
        raise APIError(400, f"{key}={value!r} must be {'a number' if kind is float else 'an integer'} from {low} "
                            f"to {high}", param=key)
    return value


def _stops(body):
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "stop must be a string or a list of up to 4 strings", param="stop")
    return tuple(stop)


def _content(message):
    """A message's text: a string, or OpenAI's list of parts, of which only text parts are understood."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise APIError(400, "a message's content must be text (a string, or a list of text parts)", param="messages")


class Service:
    """The app's state: the engine, the tokenizer, how chats are rendered, and the server's limits."""

    def __init__(self, engine, tok, model_id, transcript, api_key=None, max_tokens=256):
        self.engine, self.tok, self.model_id = engine, tok, model_id
        self.transcript, self.api_key, self.max_tokens = transcript, api_key, max_tokens
        self.stop_tokens = (tok.eot,) if tok.eot is not None else ()
        self.ready = False  # True between the app's start-up and its shut-down

    def check(self, request, body=None):
        if not self.ready or not self.engine.accepting:
            raise APIError(503, "the server is starting or stopping; try again in a moment", type="server_error")
        if self.api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                raise APIError(401, "missing or wrong API key; send the server's --api_key as 'Authorization: "
                                    "Bearer <key>'", code="invalid_api_key")
        if body is not None and body.get("model") not in (None, self.model_id):
            raise APIError(404, f"the model {body.get('model')!r} does not exist here; this server serves "
                                f"{self.model_id!r} (GET /v1/models)", code="model_not_found", param="model")

    def requested_tokens(self, body):
        """The longest reply asked for, lowered to the server's --max_tokens."""
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        return min(_number(body, key, self.max_tokens, 1, 1 << 30, int), self.max_tokens)

    def params(self, body, room, stop=(), line_stop=None):
        """The request's sampling settings; `room`: the tokens left in the context after the prompt."""
        if body.get("n", 1) != 1:
            raise APIError(400, "n must be 1: this server makes one choice per request", param="n")
        return Params(max_tokens=min(self.requested_tokens(body), room),
                      temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                      top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-9,
                      seed=_number(body, "seed", None, -(1 << 63), (1 << 63) - 1, int),
                      stop=_stops(body) + tuple(stop), stop_tokens=self.stop_tokens, line_stop=line_stop)

    def encode(self, text):
        try:
            return self.tok.encode(text)
        except Exception as e:  # noqa: BLE001  a character vocabulary refuses what it cannot spell, with a sentence
            raise APIError(400, str(e), param="prompt") from None

    def chat_prompt(self, messages, budget):
        """The conversation in the model's template, ending in the assistant's prefix; the oldest messages
        (system messages kept) are left out until it fits `budget` tokens, as chat.py does."""
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise APIError(400, "messages must be a non-empty list of {'role': ..., 'content': ...} objects",
                           param="messages")
        turns = []
        for m in messages:
            if m.get("role") not in ROLES:
                raise APIError(400, f"role={m.get('role')!r} is not one of {', '.join(ROLES)}", param="messages")
            turns.append({"role": ROLES[m["role"]], "content": _content(m).strip()})
        while True:
            text = "".join(t for t, _ in self.transcript.segments(turns)) + self.transcript.bot
            ids = self.encode(text)
            dropped = next((i for i, t in enumerate(turns[:-1]) if t["role"] != "system"), None)
            if len(ids) <= budget or dropped is None:
                return ids
            turns.pop(dropped)


def _sse(obj):
    return f"data: {json.dumps(obj)}\n\n"


def make_app(service, page=PAGE):
    """The Starlette app of a Service. Its lifespan starts the engine and, on shutdown (after uvicorn
    has let the open responses finish, or cancelled them), stops it."""
    html = page.read_text(encoding="utf-8")

    async def answer(request, body, ids, params, kind):
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()

        def on_event(text, finish_reason):  # on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, (text, finish_reason))

        try:
            handle = service.engine.submit(ids, params, on_event)
        except ValueError as e:
            raise APIError(400, str(e), param="messages" if kind == "chat" else "prompt",
                           code="context_length_exceeded") from None
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry in a few seconds", type="server_overloaded",
                           headers={"Retry-After": "2"}) from None
        except NotRunning:
            raise APIError(503, "the server is stopping", type="server_error") from None
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created, model = int(time.time()), service.model_id
        usage = lambda: {"prompt_tokens": len(ids), "completion_tokens": len(handle.tokens),  # noqa: E731
                         "total_tokens": len(ids) + len(handle.tokens)}

        async def next_event():
            """The engine's next (text, finish_reason); cancels the request if the client has gone."""
            while True:
                try:
                    return await asyncio.wait_for(events.get(), 1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        handle.cancel()

        if not body.get("stream"):
            pieces, finish = [], None
            try:
                while finish is None:
                    text, finish = await next_event()
                    pieces.append(text)
            finally:
                handle.cancel()  # a no-op once finished; frees the row of a request whose handler was cancelled
            if finish in ("cancelled", "error"):  # the server is stopping, or the engine failed
                raise APIError(503 if finish == "cancelled" else 500, "the server stopped before the reply was "
                               "finished" if finish == "cancelled" else "decoding failed; see the server's log",
                               type="server_error")
            text = "".join(pieces)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if kind == "chat"
                      else {"index": 0, "text": text})
            choice.update(finish_reason=finish, logprobs=None)
            return JSONResponse({"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                                 "created": created, "model": model, "choices": [choice], "usage": usage()})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(text, finish, first=False):
            if kind == "chat":
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            return _sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]})

        async def stream():
            try:
                if kind == "chat":
                    yield chunk("", None, first=True)
                finish = None
                while finish is None:
                    text, finish = await next_event()
                    if text:
                        yield chunk(text, None)
                yield chunk("", "length" if finish == "length" else "stop")
                if include_usage:
                    yield _sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                                "usage": usage()})
                yield "data: [DONE]\n\n"
            finally:  # the client went away (the response's task is cancelled), or it is done
                handle.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def read_body(request):
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise APIError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    def guarded(handler):
        async def endpoint(request):
            try:
                return await handler(request)
            except APIError as e:
                return e.response()
        return endpoint

    @guarded
    async def chat_completions(request):
        service.check(request)
        body = await read_body(request)
        service.check(request, body)
        block = service.engine.block_size
        reserve = min(service.requested_tokens(body), block // 2)  # room for the reply, as chat.py keeps
        ids = service.chat_prompt(body.get("messages"), block - reserve)
        t = service.transcript
        params = service.params(body, block - len(ids), stop=t.stops(), line_stop=t.line_stop())
        return await answer(request, body, ids, params, "chat")

    @guarded
    async def completions(request):
        service.check(request)
        body = await read_body(request)
        service.check(request, body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "prompt must be a string", param="prompt")
        ids = service.encode(prompt) or ([service.tok.eot] if service.tok.eot is not None else [])
        return await answer(request, body, ids, service.params(body, service.engine.block_size - len(ids)),
                            "completion")

    @guarded
    async def models(request):
        service.check(request)
        return JSONResponse({"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                                         "owned_by": "gptkit"}]})

    async def health(request):
        live, waiting = service.engine.counts()
        ok = service.ready and service.engine.accepting
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": service.model_id, "decoding": live,
                             "waiting": waiting}, status_code=200 if ok else 503)

    async def index(request):
        return HTMLResponse(html)

    @asynccontextmanager
    async def lifespan(app):
        service.engine.start()
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            await asyncio.get_running_loop().run_in_executor(None, service.engine.stop)

    return Starlette(routes=[
        Route("/", index),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ], lifespan=lifespan)


def listen(host, port):
    """A socket bound to host:port (for uvicorn.Server.run(sockets=...)), or a UserError saying why not."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server need not wait for TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port, or a --host "
                        f"of this machine") from None
    return sock


def is_loopback(host):
    """Whether host is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
