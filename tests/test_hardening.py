"""Attacks on what reads outside input: the viewer through a real server on 127.0.0.1, and planted pickles.

The viewer runs as ``mirage-gym play --generator oracle`` in a child process (so its memory can be
read), on a free port of 127.0.0.1; the fixture stops it. What is attacked: cross-origin
websockets, foreign ``Host`` headers (DNS rebinding), decompression-bomb uploads, malformed
websocket messages.
"""

from __future__ import annotations

import http.client
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import uvicorn

websockets_sync = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import InvalidStatus  # noqa: E402

from mirage_gym import cli  # noqa: E402
from mirage_gym.play import PlaySession  # noqa: E402
from mirage_gym.play.server import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TURN = [0, 0, 1, 0]  # a list of ints: what the env's action space accepts
MB = 2**20


# ---------------------------------------------------------------------- a real viewer in a child process


class Viewer:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port
        self.origin = f"http://127.0.0.1:{port}"

    def rss(self, field: str = "VmRSS") -> int:
        """Bytes of the server process's resident memory (``VmHWM``: its peak so far)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def connect(self, origin: str | None = None, **kwargs):
        return websockets_sync.connect(f"ws://127.0.0.1:{self.port}/ws", origin=origin or self.origin,
                                       open_timeout=30, max_size=2**24, **kwargs)

    def request(self, method: str, path: str, *, host: str | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host if host is not None else f"127.0.0.1:{self.port}")
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def viewer():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = ("from mirage_gym import cli; raise SystemExit(cli.main(['play', '--generator', 'oracle', "
               "'--resolution', '64', '--chunk', '2', '--seed', '3', '--port', '0']))")
    proc = subprocess.Popen([sys.executable, "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    port: list[int] = []

    def read() -> None:  # keep draining the output so the server never blocks on a full pipe
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if found and not port:
                port.append(int(found.group(1)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not port and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert port, f"the viewer did not start: {''.join(lines)}"
        yield Viewer(proc, port[0])
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    output = "".join(lines)
    assert "Traceback" not in output, output  # no request crashed a handler


def hello(ws) -> tuple[str, dict]:
    greeting = json.loads(ws.recv(timeout=60))
    assert greeting["type"] == "hello", greeting
    first = json.loads(ws.recv(timeout=60))
    assert first["type"] == "update"
    return greeting["token"], first


def zero_png(width: int, height: int, rows: int | None = None) -> bytes:
    """An all-zero 8-bit grey PNG, compressed row by row: ~1 MB on disk for 20000x20000 (400 MB decoded).

    ``rows``: write only that many rows of pixel data (a header that declares more than the file holds).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    data = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to declare ``width`` x ``height``."""
    ok, data = cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))
    assert ok
    data = bytearray(data.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


# ---------------------------------------------------------------------- origin and host


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://localhost",
                                    "http://127.0.0.1.evil.example", "file://"])
def test_a_websocket_from_another_origin_is_refused(viewer, origin):
    with pytest.raises(InvalidStatus) as refused:
        with viewer.connect(origin=origin):
            pass
    assert refused.value.response.status_code == 403
    assert b"may not drive this viewer" in refused.value.response.body


def test_the_viewers_own_pages_connect(viewer):
    for origin in (viewer.origin, f"http://localhost:{viewer.port}"):
        with viewer.connect(origin=origin) as ws:
            hello(ws)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost",
                                  "127.0.0.1.evil.example:{port}", "", "127.0.0.1:{port}@evil"])
@pytest.mark.parametrize("path", ["/", "/static/play.js", "/api/video?token=x"])
def test_a_foreign_host_is_refused(viewer, host, path):
    status, body = viewer.request("GET", path, host=host.format(port=viewer.port))
    assert status == 403 and b"is not this viewer's address" in body and b"--allow-host" in body


def test_the_viewers_own_names_are_served(viewer):
    for host in (f"127.0.0.1:{viewer.port}", f"localhost:{viewer.port}", f"LOCALHOST:{viewer.port}"):
        status, body = viewer.request("GET", "/", host=host)
        assert status == 200 and b"/static/play.js" in body


def test_a_rebound_host_cannot_upload(viewer):
    with viewer.connect() as ws:
        token, _ = hello(ws)
        status, _ = viewer.request("POST", "/api/start-image", host="evil.example",
                                   body=png(np.zeros((8, 8, 3), np.uint8)), headers={"X-Mirage-Token": token})
        assert status == 403


# ---------------------------------------------------------------------- uploads


def test_a_decompression_bomb_is_refused_before_decoding(viewer):
    bomb = zero_png(20000, 20000)
    assert len(bomb) < 2 * MB
    with viewer.connect() as ws:
        token, first = hello(ws)
        rss, peak = viewer.rss(), viewer.rss("VmHWM")
        status, body = viewer.request("POST", "/api/start-image", body=bomb, headers={"X-Mirage-Token": token})
        assert status == 400, body
        detail = json.loads(body)["detail"]
        assert "20000x20000" in detail and "megapixels" in detail
        # 400 MB would be allocated by decoding it: the server did not grow by anything like that.
        assert viewer.rss() - rss < 100 * MB and viewer.rss("VmHWM") - peak < 100 * MB
        ws.send(json.dumps({"type": "move", "action": TURN}))  # the session is alive and unchanged
        moved = json.loads(ws.recv(timeout=60))
        assert moved["type"] == "update" and moved["start_image"] is False and moved["seed"] == first["seed"]


@pytest.mark.parametrize(("name", "make", "expected"), [
    ("PNG declaring 40000x40000", lambda: zero_png(40000, 40000, rows=10), "40000x40000"),
    ("JPEG declaring 60000x60000", lambda: jpeg_declaring(60000, 60000), "60000x60000"),
    ("PNG declaring 0 rows", lambda: zero_png(16, 16).replace((16).to_bytes(4, "big") + bytes([8]),
                                                             (0).to_bytes(4, "big") + bytes([8]), 1), "image"),
    ("truncated PNG", lambda: png(np.full((64, 64, 3), 7, np.uint8))[:60], "image"),
    ("GIF", lambda: b"GIF89a" + bytes(40), "not an image"),
    ("text", lambda: b"hello", "not an image"),
])
def test_every_bad_image_is_a_400_naming_the_problem(viewer, name, make, expected):
    with viewer.connect() as ws:
        token, _ = hello(ws)
        status, body = viewer.request("POST", "/api/start-image", body=make(), headers={"X-Mirage-Token": token})
    assert status == 400, (name, status, body)
    assert expected in json.loads(body)["detail"], (name, body)


def test_a_good_image_still_starts_the_scene(viewer):
    with viewer.connect() as ws:
        token, _ = hello(ws)
        status, body = viewer.request("POST", "/api/start-image", body=png(np.full((90, 120, 3), 77, np.uint8)),
                                      headers={"X-Mirage-Token": token})
        assert status == 200 and json.loads(body)["start_image"] is True


# ---------------------------------------------------------------------- malformed websocket messages


MALFORMED = [
    ("binary frame", b"\x00\x01binary"),
    ("5000-digit seed", '{"type": "reset", "seed": ' + "9" * 5000 + "}"),
    ("100,000-deep array", "[" * 100_000 + "]" * 100_000),
    ("30,000-deep array", "[" * 30_000 + "]" * 30_000),
    ("30,000-deep object", '{"a":' * 30_000 + "1" + "}" * 30_000),
    ("not JSON", "not json"),
    ("empty", ""),
    ("a bare number", "123"),
    ("null", "null"),
    ("a list", "[1, 2]"),
    ("no type", "{}"),
    ("unknown type", '{"type": "fly"}'),
    ("a list as type", '{"type": ["move"]}'),
    ("an object as type", '{"type": {"a": 1}}'),
    ("a long type", json.dumps({"type": "x" * 10_000})),
    ("strings as the action", '{"type": "move", "action": ["1", "0", "0", "0"]}'),
    ("booleans as the action", '{"type": "move", "action": [true, false, false, false]}'),
    ("a string action", '{"type": "move", "action": "forward"}'),
    ("no action", '{"type": "move"}'),
    ("an object action", '{"type": "move", "action": {"forward": 1}}'),
    ("a nested action", '{"type": "move", "action": [[1, 0, 0, 0]]}'),
    ("3 numbers", '{"type": "move", "action": [1, 0, 0]}'),
    ("out of bounds", '{"type": "move", "action": [5, 0, 0, 0]}'),
    ("NaN", '{"type": "move", "action": [NaN, 0, 0, 0]}'),
    ("infinity", '{"type": "move", "action": [1e999, 0, 0, 0]}'),
    ("a 4000-digit action", '{"type": "move", "action": [' + "9" * 4000 + ", 0, 0, 0]}"),
    ("a string seed", '{"type": "reset", "seed": "3"}'),
    ("a boolean seed", '{"type": "reset", "seed": true}'),
    ("a float seed", '{"type": "reset", "seed": 1.5}'),
    ("a 4000-digit seed", '{"type": "reset", "seed": ' + "9" * 4000 + "}"),
    ("a list as memory mode", '{"type": "memory", "mode": [1]}'),
    ("a huge string", json.dumps({"type": "move", "action": "x" * 200_000})),
]


def test_every_malformed_message_is_answered_and_the_socket_stays_up(viewer):
    with viewer.connect() as ws:
        _, first = hello(ws)
        for name, message in MALFORMED:
            ws.send(message)
            reply = json.loads(ws.recv(timeout=60))
            assert reply["type"] == "error" and reply["message"], (name, reply)
            assert len(reply["message"]) <= 500, name
        ws.send(json.dumps({"type": "move", "action": TURN}))  # still driving the same scene
        moved = json.loads(ws.recv(timeout=60))
        assert moved["type"] == "update" and moved["yaw"] == pytest.approx(first["yaw"] + 15.0, abs=1e-3)
        assert moved["frames_generated"] == 2


# ---------------------------------------------------------------------- --allow-host / --allow-origin


def test_allowed_names_for_a_proxy(tmp_path):
    session = PlaySession(generator="oracle", resolution=64, chunk=2, seed=3)
    app = create_app(session, handover_seconds=0.2, allow_hosts=["mirage.example"],
                     allow_origins=["https://mirage.example"])
    sock = __import__("socket").create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = sock.getsockname()[1]
        proxied = Viewer(None, port)  # type: ignore[arg-type]
        assert proxied.request("GET", "/", host="mirage.example")[0] == 200
        assert proxied.request("GET", "/", host="evil.example")[0] == 403
        with proxied.connect(origin="https://mirage.example") as ws:
            hello(ws)
        with pytest.raises(InvalidStatus):
            with proxied.connect(origin="https://evil.example"):
                pass
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        session.close()


@pytest.mark.parametrize(("flag", "value"), [("--allow-origin", "evil.example"), ("--allow-origin", "ftp://x"),
                                              ("--allow-host", "a b"), ("--allow-host", "x:port")])
def test_malformed_allow_flags_are_refused_before_loading(flag, value, capsys):
    assert cli.main(["play", "--generator", "oracle", "--port", "0", flag, value]) == 2
    assert flag in capsys.readouterr().err


# ---------------------------------------------------------------------- planted pickles


class _Payload:
    """Unpickling this calls ``Path.touch`` on the marker: code run from a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))


def test_the_payload_runs_when_unpickled(tmp_path):
    """The planted file is a real attack: ``pickle.loads`` (``torch.load(weights_only=False)``) runs it."""
    marker = tmp_path / "ran"
    plant(tmp_path / "x.bin", marker)
    pickle.loads((tmp_path / "x.bin").read_bytes())
    assert marker.exists()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from tiny_generator import save_tiny_generator

    return save_tiny_generator(tmp_path_factory.mktemp("tiny") / "g")


def copy_folder(source: Path, target: Path) -> Path:
    import shutil

    return Path(shutil.copytree(source, target))


WEIGHTS = "diffusion_pytorch_model.safetensors"


def test_a_pickle_in_place_of_the_weights_is_not_executed(tiny_folder, tmp_path):
    from mirage_gym.model.generator import MirageGenerator

    marker = tmp_path / "ran"
    folder = copy_folder(tiny_folder, tmp_path / "only_pickle")
    (folder / "transformer" / WEIGHTS).unlink()
    plant(folder / "transformer" / "diffusion_pytorch_model.bin", marker)  # what diffusers would torch.load
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights in .*only_pickle/transformer"):
        MirageGenerator.from_pretrained(folder)
    renamed = copy_folder(tiny_folder, tmp_path / "renamed")
    plant(renamed / "vae" / WEIGHTS, marker)  # a pickle under the safetensors name
    with pytest.raises(ValueError, match=r"renamed/vae/diffusion_pytorch_model\.safetensors is not a valid"):
        MirageGenerator.from_pretrained(renamed)
    assert not marker.exists()


def test_pickles_next_to_the_weights_are_never_read(tiny_folder, tmp_path):
    from mirage_gym.model.generator import MirageGenerator

    marker = tmp_path / "ran"
    folder = copy_folder(tiny_folder, tmp_path / "beside")
    for component in ("transformer", "vae", "depth_head"):
        plant(folder / component / "diffusion_pytorch_model.bin", marker)
        plant(folder / component / "pytorch_model.bin", marker)
    MirageGenerator.from_pretrained(folder)  # loads the safetensors
    assert not marker.exists()


def test_a_pickled_lora_is_not_executed(tmp_path):
    from test_pretrained import wan_folder

    from mirage_gym.model.generator import MirageGenerator
    from mirage_gym.model.pretrained import LORA_WEIGHTS, add_lora

    marker = tmp_path / "ran"
    base = wan_folder(tmp_path / "wan", a14b=False)
    gen = MirageGenerator.from_pretrained(base)
    add_lora(gen.transformer, rank=2)
    lora = gen.save_pretrained(tmp_path / "lora")
    plant(lora / LORA_WEIGHTS, marker)
    with pytest.raises(ValueError, match=r"lora/pytorch_lora_weights\.safetensors is not a valid safetensors"):
        MirageGenerator.from_pretrained(base, lora=lora)
    assert not marker.exists()


def test_a_pickled_latent_cache_is_not_executed(tmp_path):
    from mirage_gym.memory import LatentCache

    marker = tmp_path / "ran"
    plant(tmp_path / "cache.safetensors", marker)
    with pytest.raises(ValueError, match=r"cache\.safetensors is not a readable safetensors file"):
        LatentCache.load(tmp_path / "cache.safetensors")
    assert not marker.exists()


def test_no_loader_in_the_package_unpickles():
    """Every ``torch.load`` in the package passes ``weights_only=True``; nothing calls
    ``pickle.load``/``np.load(allow_pickle=True)``."""
    offenders = []
    for path in sorted((ROOT / "mirage_gym").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in match.group(0):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
        for pattern in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"weights_only\s*=\s*False"):
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not offenders, offenders


# ---------------------------------------------------------------------- one validation path for actions


CONTINUOUS = [
    [1, 0, 0, 0], (0.5, -1, 0, 0.25), np.array([1.0, 0, 0, 0], np.float32), np.array([1.0, 0, 0, 0], np.float16),
    np.array([1, 0, 0, 0], np.int16), [np.float32(1), 0, 0, np.int64(0)],
    ["1", "0", "0", "0"], [True, False, False, False], np.zeros(4, bool), [1, 0, 0], [[1, 0, 0, 0]], "forward", None,
    [None, 0, 0, 0], [2, 0, 0, 0], [float("nan"), 0, 0, 0], [float("inf"), 0, 0, 0], [10**5000, 0, 0, 0],
    np.zeros(4, np.int64), {"forward": 1},
]


@pytest.mark.parametrize("action", CONTINUOUS, ids=[f"{type(a).__name__}{k}" for k, a in enumerate(CONTINUOUS)])
def test_to_motion_accepts_what_the_action_space_contains_and_no_strings_or_booleans(action):
    import warnings

    from mirage_gym.envs.actions import single_action_space, to_motion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium warns when it casts a list
        contained = single_action_space("continuous").contains(action)
    texty = (isinstance(action, (list, tuple)) and any(isinstance(v, (str, bool)) for v in action)) or (
        isinstance(action, np.ndarray) and action.dtype == bool)
    if contained and not texty:
        assert to_motion(action, "continuous").shape == (1, 4)
    else:  # contains() casts strings and booleans to numbers: the env refuses them
        with pytest.raises(ValueError, match="action"):
            to_motion(action, "continuous")


def test_the_env_steps_with_a_list_of_ints_as_with_its_float32_array():
    from mirage_gym.envs import MirageRoomEnv

    kwargs = {"generator": "oracle", "resolution": 32, "chunk": 2, "room_seeds": [0]}
    listed, arrayed = MirageRoomEnv(**kwargs), MirageRoomEnv(**kwargs)
    listed.reset(seed=1)
    arrayed.reset(seed=1)
    a = listed.step([0, 0, 1, 0])[0]
    b = arrayed.step(np.array([0, 0, 1, 0], np.float32))[0]
    assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["cam_to_world"], b["cam_to_world"])
    for bad in (["0", "0", "1", "0"], [False, False, True, False]):
        with pytest.raises(ValueError, match="action must be numbers"):
            listed.step(bad)
    discrete = MirageRoomEnv(**kwargs, action_type="discrete")
    discrete.reset(seed=1)
    discrete.step(np.int64(1))
    for bad in (True, "1", 1.0):
        with pytest.raises(ValueError, match="integer move index"):
            discrete.step(bad)
