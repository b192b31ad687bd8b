"""``mirage-gym play``: drive the camera through a generated scene in the browser.

A FastAPI app serves one static page (``static/``, no internet needed) and talks to it over
a websocket: the page sends requests (``move``, ``reset``, ``memory``) one at a time and gets
one reply each (``update`` or ``error``), so a held key runs the generator back to back and
never queues work. Start images are uploaded and the session's video downloaded over plain
HTTP. One browser session owns the scene: the first websocket gets a token that the HTTP
calls must carry; another page is told the scene is taken. Compute runs in a worker thread
behind the :class:`~mirage_gym.play.session.PlaySession` lock, one request at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import socket
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from mirage_gym.model.generator import MEMORY_MODES
from mirage_gym.play.session import PlaySession, Update, too_large_message
from mirage_gym.video import colorize_depth

__all__ = ["STATIC_DIR", "add_arguments", "create_app", "run", "update_message"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
TAKEN = ("Another browser session is driving this scene: only one can at a time. Close that tab (or window), "
         "then press Retry.")
NOT_OWNER = ("This page does not own the scene (another browser session drives it, or the connection was lost): "
             "reload the page.")
WS_TAKEN = 4000  # websocket close code (application range) for "the scene is taken"
# A reloaded page connects before the server has seen its old socket go (that shows only when the
# old socket's pending reply is sent): a newcomer waits this long for the scene to be free.
HANDOVER_SECONDS = 3.0


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
    }


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


def create_app(session: PlaySession, handover_seconds: float = HANDOVER_SECONDS) -> FastAPI:
    """The web app driving ``session`` (the caller owns the session and closes it).

    ``handover_seconds``: how long a new page waits for the scene before it is told it is taken.
    """
    app = FastAPI(title="mirage-gym play", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    owner = _Owner()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def handle(request: Any) -> dict[str, Any]:
        """One websocket request -> its reply (runs in a worker thread)."""
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
            else:
                raise ValueError(f"unknown request type {kind!r}; expected 'move', 'reset' or 'memory'")
        except ValueError as err:
            return {"type": "error", "message": str(err)}
        return update_message(update)

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
                text = await websocket.receive_text()
                try:
                    request = json.loads(text)
                except json.JSONDecodeError:
                    await websocket.send_json({"type": "error", "message": "a request must be JSON"})
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
    parser.add_argument("--resolution", type=int, default=128, help="frame height and width (the model's)")
    parser.add_argument("--chunk", type=int, default=4, help="frames generated per move (the model's)")
    parser.add_argument("--seed", type=int, default=0, help="reset seed of the first scene (room and start pose)")
    parser.add_argument("--moving-objects", type=int, default=0, help="moving objects in the room")
    parser.add_argument("--device", default="cpu", help="where the generator runs (cpu, cuda, ...)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only; another address exposes the page)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")


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
    try:
        session = PlaySession(
            args.generator, memory=args.memory, resolution=args.resolution, chunk=args.chunk, seed=args.seed,
            moving_objects=args.moving_objects, device=args.device,
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
    try:
        uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning")).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl+C, then re-raises it
        print("mirage-gym play: stopped")
    finally:
        sock.close()
        session.close()
    return 0
