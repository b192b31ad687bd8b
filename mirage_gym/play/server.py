"""``mirage-gym play``: drive the camera through a generated scene in the browser.

A FastAPI app serves one static page (``static/``, no internet needed) and talks to it over
a websocket: the page sends requests (``move``, ``reset``, ``memory``) one at a time and gets
one reply each (``update`` or ``error``), so a held key runs the generator back to back and
never queues work. Start images are uploaded and the session's video downloaded over plain
HTTP. One browser session owns the scene: the first websocket gets a token that the HTTP
calls must carry; another page is told the scene is taken. Compute runs in a worker thread
behind the :class:`~mirage_gym.play.session.PlaySession` lock, one request at a time.

Only this machine's browser pages may drive it: every HTTP request must carry a ``Host`` that
is the address the viewer serves (``127.0.0.1``, ``localhost``, ``[::1]`` or the address the
connection arrived at, with the served port), which defeats DNS rebinding, and a websocket whose
``Origin`` is another site is refused, so a page on another origin cannot connect, take the
owner token or move the camera. ``--allow-host``/``--allow-origin`` add names for a viewer put
behind one's own proxy. Malformed websocket messages (binary frames, invalid or deeply nested
JSON, huge numbers, wrong types) get an ``error`` reply and the connection stays up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from mirage_gym.model.generator import MEMORY_MODES
from mirage_gym.play.session import PlaySession, Update, too_large_message
from mirage_gym.video import colorize_depth

__all__ = ["STATIC_DIR", "HostGuard", "add_arguments", "create_app", "run", "update_message"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
TAKEN = ("Another browser session is driving this scene: only one can at a time. Close that tab (or window), "
         "then press Retry.")
NOT_OWNER = ("This page does not own the scene (another browser session drives it, or the connection was lost): "
             "reload the page.")
WS_TAKEN = 4000  # websocket close code (application range) for "the scene is taken"
# A reloaded page connects before the server has seen its old socket go (that shows only when the
# old socket's pending reply is sent): a newcomer waits this long for the scene to be free.
HANDOVER_SECONDS = 3.0
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
MAX_MESSAGE_CHARS = 64 * 1024  # a request is a few dozen characters; longer text is refused unread
MAX_REPLY_MESSAGE = 500  # error messages echo the request: keep them short


def _png(image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for an image of shape {image.shape}")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def update_message(update: Update) -> dict[str, Any]:
    """The page's ``update`` message: frames, depth colour maps and the map as PNG data URLs, and the numbers."""
    position, yaw, pitch = update.position_yaw_pitch
    return {
        "type": "update",
        "frames": [_png(frame) for frame in update.rgb],
        "depth": [_png(frame) for frame in colorize_depth(update.depth)],
        "map": _png(update.map),
        "position": position,
        "yaw": yaw,
        "pitch": pitch,
        "step_time": update.step_time,
        "memory": update.memory,
        "memory_bytes": update.memory_bytes,
        "memory_points": update.memory_points,
        "frames_generated": update.frames_generated,
        "collided": update.collided,
        "seed": update.seed,
        "room_seed": update.room_seed,
        "start_image": update.start_image,
        "physics": update.physics,
        "blocked_by": update.blocked_by,
    }


def _split_host(value: str, default_port: int | None) -> tuple[str, int | None] | None:
    """``"name:port"``, ``"[::1]:port"`` or ``"name"`` -> (lower-case name, port); None if malformed."""
    value = value.strip().lower()
    if not value or any(c.isspace() or c in "/\\@?#" for c in value):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    elif ":" in value:  # a bare IPv6 address: not a valid Host
        return None
    else:
        name, port_text = value, ""
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5:
            return None
        return name, int(port_text)
    return name, default_port


class HostGuard:
    """ASGI middleware: refuse requests whose ``Host`` is not this viewer's address, and websockets from other origins.

    Allowed ``Host`` values are ``127.0.0.1``, ``localhost``, ``[::1]`` and the address the
    connection arrived at (the server's own socket address), each with the port the request
    arrived at, plus ``allow_hosts`` (``name``, any port, or ``name:port``). A websocket's
    ``Origin`` (browsers always send one) must be ``http(s)://`` one of those allowed hosts or one
    of ``allow_origins`` (``scheme://name[:port]``, exactly); a websocket without ``Origin``
    (not a browser) is let through. Refusals are HTTP 403 naming the problem.
    """

    def __init__(self, app: Any, allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allow_hosts: list[tuple[str, int | None]] = []
        for entry in allow_hosts:
            parsed = _split_host(entry, None)
            if parsed is None:
                raise ValueError(f"--allow-host must be a host name or name:port, got {entry!r}")
            self.allow_hosts.append(parsed)
        self.allow_origins = {self._origin_key(entry) for entry in allow_origins}

    @staticmethod
    def _origin_key(origin: str) -> str:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"--allow-origin must be scheme://host[:port] (http or https), got {origin!r}")
        return f"{parts.scheme}://{parts.netloc}"

    def _host_allowed(self, value: str, default_port: int | None, server: Any) -> bool:
        parsed = _split_host(value, default_port)
        if parsed is None:
            return False
        name, port = parsed
        if any(name == n and (p is None or p == port) for n, p in self.allow_hosts):
            return True
        served_host, served_port = (str(server[0]).lower(), int(server[1])) if server else (None, None)
        return port == served_port and (name in LOCAL_NAMES or name == served_host)

    def _origin_allowed(self, origin: str, server: Any) -> bool:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (a sandboxed or file:// page), other schemes
        if f"{parts.scheme}://{parts.netloc}" in self.allow_origins:
            return True
        return self._host_allowed(parts.netloc, 443 if parts.scheme == "https" else 80, server)

    def refusal(self, scope: dict[str, Any]) -> str | None:
        """Why ``scope`` is refused, or None."""
        headers = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        server = scope.get("server")
        secure = scope.get("scheme") in ("https", "wss")
        host = headers.get("host")
        if host is None or not self._host_allowed(host, 443 if secure else 80, server):
            port = f":{server[1]}" if server else ""
            return (f"Host {host!r} is not this viewer's address (127.0.0.1{port}, localhost{port}, [::1]{port}); "
                    "behind your own proxy, start it with --allow-host NAME")
        origin = headers.get("origin")
        if scope["type"] == "websocket" and origin is not None and not self._origin_allowed(origin, server):
            return (f"Origin {origin!r} may not drive this viewer (only pages it serves may); behind your own proxy, "
                    "start it with --allow-origin URL")
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self.refusal(scope)
        if reason is None:
            await self.app(scope, receive, send)
            return
        logger.warning("mirage-gym play: refused a %s request: %s", scope["type"], reason)
        body = json.dumps({"detail": reason}).encode()
        if scope["type"] == "websocket":
            message = await receive()  # websocket.connect
            if message.get("type") != "websocket.connect":
                return
            if "websocket.http.response" not in scope.get("extensions", {}):
                await send({"type": "websocket.close", "code": 1008})  # the server answers 403 without a body
                return
            await send({"type": "websocket.http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _Owner:
    """Which browser session drives the scene: a random token while its websocket is open."""

    def __init__(self) -> None:
        self.token: str | None = None

    def claim(self) -> str | None:
        if self.token is not None:
            return None
        self.token = secrets.token_urlsafe(16)
        return self.token

    async def wait_and_claim(self, seconds: float) -> str | None:
        """:meth:`claim`, retried for up to ``seconds`` while another session holds the scene."""
        deadline = asyncio.get_running_loop().time() + seconds
        token = self.claim()
        while token is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            token = self.claim()
        return token

    def release(self, token: str) -> None:
        if self.token == token:
            self.token = None

    def check(self, token: str | None) -> None:
        if self.token is None or token is None or not secrets.compare_digest(token, self.token):
            raise HTTPException(status_code=403, detail=NOT_OWNER)


def _error(message: str) -> dict[str, Any]:
    if len(message) > MAX_REPLY_MESSAGE:
        message = message[: MAX_REPLY_MESSAGE - 3] + "..."
    return {"type": "error", "message": message}


def parse_request(message: dict[str, Any]) -> Any:
    """A websocket ``receive`` message -> the parsed JSON request; ``ValueError`` saying what is wrong with it."""
    text = message.get("text")
    if text is None:
        if message.get("bytes") is not None:
            raise ValueError("binary frames are not accepted: send each request as a JSON text message")
        raise ValueError("an empty message: send each request as a JSON text message")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"the request is too long ({len(text)} characters; at most {MAX_MESSAGE_CHARS})")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("a request must be JSON: it is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, and integers over Python's 4300-digit limit
        raise ValueError(f"a request must be JSON: {str(err).split(';')[0]}") from None


def create_app(session: PlaySession, handover_seconds: float = HANDOVER_SECONDS, *,
               allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = ()) -> FastAPI:
    """The web app driving ``session`` (the caller owns the session and closes it).

    ``handover_seconds``: how long a new page waits for the scene before it is told it is taken.
    ``allow_hosts``, ``allow_origins``: more names it may be reached by (see :class:`HostGuard`).
    """
    allow_hosts, allow_origins = list(allow_hosts), list(allow_origins)
    HostGuard(None, allow_hosts, allow_origins)  # ValueError on a malformed name, now rather than at the first request
    app = FastAPI(title="mirage-gym play", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(HostGuard, allow_hosts=allow_hosts, allow_origins=allow_origins)
    app.state.session = session
    owner = _Owner()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def handle(request: Any) -> dict[str, Any]:
        """One websocket request -> its reply (runs in a worker thread); never raises."""
        try:
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object with a 'type'")
            kind = request.get("type")
            if kind == "move":
                update = session.step(request.get("action"))
            elif kind == "reset":
                update = session.reset(request.get("seed"))
            elif kind == "memory":
                update = session.set_memory(request.get("mode"))
            elif isinstance(kind, str) and len(kind) <= 40:
                raise ValueError(f"unknown request type {kind!r}; expected 'move', 'reset' or 'memory'")
            else:
                raise ValueError("a request's 'type' must be 'move', 'reset' or 'memory'")
            return update_message(update)
        except ValueError as err:
            return _error(str(err))
        except Exception as err:  # a bug, not the page's fault: say so and keep the connection
            logger.exception("mirage-gym play: a request failed")
            return _error(f"the request failed ({type(err).__name__}); the scene is unchanged")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.websocket("/ws")
    async def drive(websocket: WebSocket) -> None:
        await websocket.accept()
        token = await owner.wait_and_claim(handover_seconds)
        if token is None:
            await websocket.send_json({"type": "taken", "message": TAKEN})
            await websocket.close(code=WS_TAKEN)
            return
        try:
            await websocket.send_json({
                "type": "hello",
                "token": token,
                "generator": session.generator,
                "memory_modes": list(session.memory_modes),
                "all_memory_modes": list(MEMORY_MODES),
                "resolution": session.resolution,
                "chunk": session.chunk,
                "max_upload_bytes": session.max_upload_bytes,
            })
            await websocket.send_json(await asyncio.to_thread(update_message, session.latest))
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    request = parse_request(message)
                except ValueError as err:
                    await websocket.send_json(_error(str(err)))
                    continue
                await websocket.send_json(await asyncio.to_thread(handle, request))
        except WebSocketDisconnect:
            pass
        finally:
            owner.release(token)

    @app.post("/api/start-image")
    async def start_image(request: Request, x_mirage_token: str | None = Header(default=None)) -> dict[str, Any]:
        owner.check(x_mirage_token)
        limit = session.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(status_code=413, detail=too_large_message(int(declared), limit))
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > limit:  # stop reading: the body is over the limit whatever its declared length
                raise HTTPException(status_code=413, detail=too_large_message(len(data), limit))
        try:
            update = await asyncio.to_thread(session.start_from_image, bytes(data))
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        return await asyncio.to_thread(update_message, update)

    @app.get("/api/video")
    async def video(token: str | None = None) -> Response:
        owner.check(token)
        data = await asyncio.to_thread(session.video)
        name = f"mirage-play-seed{session.latest.seed}.mp4"
        return Response(data, media_type="video/mp4", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return app


# ---------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", default="default",
                        help="'default' (the shipped weights), 'oracle' (the ground-truth renderer) or a model folder")
    parser.add_argument("--memory", default="latent", choices=MEMORY_MODES, help="scene memory to start with")
    parser.add_argument("--resolution", type=int, default=None, help="frame height and width (default: the model's)")
    parser.add_argument("--chunk", type=int, default=None, help="frames generated per move (default: the model's)")
    parser.add_argument("--physics", default=None, choices=["generated", "ground_truth"],
                        help="what decides collisions (default: the house for a procedural room, the generated world "
                             "for an uploaded picture)")
    parser.add_argument("--seed", type=int, default=0, help="reset seed of the first scene (room and start pose)")
    parser.add_argument("--moving-objects", type=int, default=0, help="moving objects in the room")
    parser.add_argument("--device", default="cpu", help="where the generator runs (cpu, cuda, ...)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only; another address exposes the page)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                        help="another Host name the viewer may be reached by (repeatable), e.g. the name of your own "
                             "reverse proxy; by default only 127.0.0.1, localhost, [::1] and the listening address "
                             "with its port are served, so another site cannot reach it through DNS rebinding")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                        help="another page origin (scheme://host[:port]) whose websocket may drive the scene "
                             "(repeatable); by default only pages the viewer serves itself may")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``ValueError`` saying why not (port taken, unknown host)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port} ({err}); pick another --port or --host") from None


def run(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl+C. Bad options are a ``ValueError``, missing weights a ``FileNotFoundError``."""
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    allow_hosts, allow_origins = getattr(args, "allow_host", []), getattr(args, "allow_origin", [])
    HostGuard(None, allow_hosts, allow_origins)  # a malformed name is an error before the model loads
    try:
        session = PlaySession(
            args.generator, memory=args.memory, resolution=args.resolution, chunk=args.chunk, seed=args.seed,
            moving_objects=args.moving_objects, device=args.device, physics=args.physics,
        )
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}\nTo drive the ground-truth world instead, run: "
                                "mirage-gym play --generator oracle") from None
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mirage-gym play: listening on {args.host}: anyone who can reach this machine can open the page")
    print(f"mirage-gym play ({session.generator}, memory {session.latest.memory}): open http://{shown}:{port}/ "
          "in a browser; Ctrl+C stops", flush=True)
    # The address given to --host is a name the user chose: pages may use it (with the port), as the loopback names.
    app = create_app(session, allow_hosts=[*allow_hosts, f"[{args.host}]:{port}" if ":" in args.host else
                                           f"{args.host}:{port}"], allow_origins=allow_origins)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl+C, then re-raises it
        print("mirage-gym play: stopped")
    finally:
        sock.close()
        session.close()
    return 0
