"""``mirage-gym play``: the session (no web), the FastAPI app (TestClient) and the page in a headless Chromium.

Scenes are small: the oracle at 64x64 with chunks of 2, or the tiny random generator (32x32).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from mirage_gym import cli
from mirage_gym.envs import generators
from mirage_gym.play import PlaySession, decode_start_image
from mirage_gym.play.latent_rgb import LatentColorProbe, calibration_colors
from mirage_gym.play.server import TAKEN, create_app, update_message
from mirage_gym.play.topdown import TopDownMap
from mirage_gym.world import make_scene
from tiny_generator import CHUNK, RESOLUTION, save_tiny_generator

ORACLE = {"generator": "oracle", "resolution": 64, "chunk": 2, "seed": 3}
FORWARD = [1.0, 0.0, 0.0, 0.0]
TURN = [0.0, 0.0, 1.0, 0.0]
HANDOVER = 0.5  # seconds a new page waits for the scene (the app's default is longer)


def png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image[..., ::-1])
    assert ok
    return data.tobytes()


def moving_step(session: PlaySession):
    """A step that changes the view: turning never collides."""
    return session.step(TURN)


@pytest.fixture()
def oracle() -> PlaySession:
    return PlaySession(**ORACLE)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return str(save_tiny_generator(tmp_path_factory.mktemp("tiny_generator")))


# ---------------------------------------------------------------------- session


def test_step_moves_the_camera_and_records_frames(oracle):
    start = oracle.latest
    assert start.rgb.shape == (1, 64, 64, 3) and start.depth.shape == (1, 64, 64) and start.memory == "oracle"
    update = moving_step(oracle)
    assert update.rgb.shape == (2, 64, 64, 3) and update.frames_generated == 2
    _, yaw0, _ = start.position_yaw_pitch
    _, yaw1, _ = update.position_yaw_pitch
    assert yaw1 == pytest.approx(yaw0 + 15.0, abs=1e-3)  # max_rotation per step, left positive
    assert not np.array_equal(update.rgb[-1], start.rgb[0])
    assert oracle.recorded_frames == 3
    assert update.step_time > 0 and oracle.latest is update


def test_same_seed_same_scene(oracle):
    first = oracle.latest
    moving_step(oracle)
    again = oracle.reset(3)
    assert np.array_equal(again.rgb, first.rgb) and np.array_equal(again.pose, first.pose)
    assert again.frames_generated == 0 and oracle.recorded_frames == 1
    other = oracle.reset(4)
    assert not np.array_equal(other.pose, first.pose)


@pytest.mark.parametrize("action", [[2.0, 0, 0, 0], [float("nan"), 0, 0, 0], [1.0, 0, 0], "forward", None,
                                    ["1", "0", "0", "0"], [True, False, False, False], [10**5000, 0, 0, 0]])
def test_bad_action_leaves_the_scene(oracle, action):
    before = oracle.latest
    with pytest.raises(ValueError, match="action"):
        oracle.step(action)
    assert oracle.latest is before and oracle.recorded_frames == 1


@pytest.mark.parametrize("seed", [-1, 2**31, 1.5, "3", True])
def test_bad_seed_leaves_the_scene(oracle, seed):
    before = oracle.latest
    with pytest.raises(ValueError, match="seed must be"):
        oracle.reset(seed)
    assert oracle.latest is before


def test_the_viewer_shows_the_physics_and_where_the_body_was_stopped():
    session = PlaySession(**ORACLE, physics="generated")
    first = session.latest
    assert first.physics == "generated" and first.blocked_by is None
    for _ in range(40):
        update = session.step(FORWARD)
        if update.collided:
            break
    assert update.collided and update.blocked_by == "obstacle"
    message = update_message(update)
    assert message["physics"] == "generated" and message["blocked_by"] == "obstacle"
    # Generated obstacles are drawn on the map (red), and the stop is marked.
    red = (update.map[..., 0] > 150) & (update.map[..., 1] < 120) & (update.map[..., 2] < 120)
    assert red.sum() > 20
    house = PlaySession(**ORACLE)
    assert house.latest.physics == "ground_truth"


def test_a_picture_in_a_generated_world_has_no_house(tiny_folder):
    session = PlaySession(tiny_folder, resolution=RESOLUTION, chunk=CHUNK, seed=3)
    start = session.latest
    assert start.physics == "ground_truth" and start.room_seed is not None
    picture = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    update = session.start_from_image(png_bytes(picture))
    assert update.physics == "generated" and update.room_seed is None and update.start_image
    assert np.array_equal(update.pose, start.pose)  # the picture restarts from the same start pose
    update = session.step([-1.0, 0.0, 0.0, 0.0])  # backwards: space the picture never showed
    assert update.collided and update.blocked_by == "unseen"
    assert update_message(update)["room_seed"] is None


def test_decode_start_image_crops_the_centre_and_resizes():
    image = np.zeros((60, 100, 3), np.uint8)
    image[:, :20] = (255, 0, 0)  # outside the centred 60x60 square
    image[:, 20:80] = (10, 200, 30)
    image[:, 80:] = (0, 0, 255)
    out = decode_start_image(png_bytes(image), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out == np.array([10, 200, 30], np.uint8)).all()


def test_start_image_restarts_the_room_from_the_picture(oracle):
    start = oracle.latest
    moving_step(oracle)
    picture = np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    update = oracle.start_from_image(png_bytes(picture))
    # The oracle shows the start image as given: the page's frame is the resized upload.
    assert np.array_equal(update.rgb[0], decode_start_image(png_bytes(picture), 64))
    assert update.start_image and update.room_seed == start.room_seed
    assert np.array_equal(update.pose, start.pose)
    assert not oracle.reset(3).start_image


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"GIF89a this is not really an image", "not an image"),
    (b"x" * 2000, "too large"),
])
def test_bad_upload_leaves_the_scene(data, message):
    session = PlaySession(**ORACLE, max_upload_bytes=1000)
    moving_step(session)
    before, frames = session.latest, session.recorded_frames
    with pytest.raises(ValueError, match=message):
        session.start_from_image(data)
    assert session.latest is before and session.recorded_frames == frames


def test_video_holds_the_recorded_frames(oracle, tmp_path):
    moving_step(oracle)
    moving_step(oracle)
    path = tmp_path / "play.mp4"
    path.write_bytes(oracle.video())
    frames = iio.imread(path, plugin="FFMPEG")
    assert frames.shape[0] == oracle.recorded_frames == 5
    assert frames.shape[1:] == (64, 64 * 2 + 2, 3)  # generated | depth, with a 2-pixel gap


def test_oracle_has_no_memory_to_switch(oracle):
    assert oracle.memory_modes == ()
    with pytest.raises(ValueError, match="oracle"):
        oracle.set_memory("pixel")


def test_memory_modes_on_a_generated_world(tiny_folder):
    session = PlaySession(tiny_folder, resolution=RESOLUTION, chunk=CHUNK, seed=1, map_size=200)
    assert session.memory_modes == ("latent", "pixel", "none")
    start = session.latest
    assert start.memory == "latent" and start.memory_points > 0 and start.memory_bytes > 0
    update = session.step(FORWARD)
    assert update.memory_points >= start.memory_points

    pixel = session.set_memory("pixel")
    assert pixel.memory == "pixel" and pixel.room_seed == start.room_seed
    assert np.array_equal(pixel.pose, start.pose) and pixel.frames_generated == 0
    assert pixel.memory_points > 0 and session.step(FORWARD).memory_points > pixel.memory_points

    none = session.set_memory("none")
    assert none.memory == "none" and none.memory_bytes == 0 and none.memory_points == 0
    with pytest.raises(ValueError, match="memory mode must be one of"):
        session.set_memory("voxels")
    assert session.latest is none


def test_map_shows_the_latent_tokens(tiny_folder):
    latent = PlaySession(tiny_folder, resolution=RESOLUTION, chunk=CHUNK, seed=1, map_size=200)
    empty = PlaySession(tiny_folder, memory="none", resolution=RESOLUTION, chunk=CHUNK, seed=1, map_size=200)
    assert latent.latest.map.shape == empty.latest.map.shape
    changed = (latent.latest.map != empty.latest.map).any(axis=-1)
    assert changed.sum() > 0  # token squares drawn over the same floor plan, path and camera


# ---------------------------------------------------------------------- map and colours


def test_latent_color_probe_recovers_an_affine_map():
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(500, 6, generator=gen)
    weight, bias = torch.randn(6, 3, generator=gen) * 20, torch.tensor([120.0, 90.0, 140.0])
    probe = LatentColorProbe.fit(latents, latents @ weight + bias, ridge=0.0)
    assert torch.allclose(probe.weight, weight, atol=1e-3) and torch.allclose(probe.bias, bias, atol=1e-3)
    colors = probe(latents[:4])
    assert colors.dtype == np.uint8
    expected = (latents[:4] @ weight + bias).round().clamp(0, 255).numpy()
    assert np.abs(colors.astype(float) - expected).max() <= 1
    with pytest.raises(ValueError, match="latents must be"):
        probe(torch.zeros(2, 5))


def test_calibration_colors_span_the_cube():
    colors = calibration_colors(3)
    assert colors.shape == (27, 3) and {0, 128, 255} == set(colors.ravel().tolist())


def test_topdown_map_draws_the_highest_point_below_the_ceiling():
    scene = make_scene(0)
    world_map = TopDownMap(scene, cell=0.1, size=200)
    lo, hi = scene.bounds
    x, y = float(lo[0] + 1.05), float(hi[1] - 1.05)  # the centre of square (10, 10)
    points = np.array([[x, y, 0.2], [x, y, 1.0], [x, y, scene.ceiling_height]], np.float32)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    far = np.eye(4)
    far[:2, 3] = lo[:2] + 20.0  # the camera outside the house: it draws nothing on the square
    image = world_map.draw(points, colors, np.zeros((0, 3)), far)
    s = world_map.scale
    assert image.shape == (*world_map.pixel_shape, 3)
    assert (image[10 * s : 11 * s, 10 * s : 11 * s] == (0, 255, 0)).all()  # highest below the ceiling
    blank = world_map.draw(points[:0], colors[:0], np.zeros((0, 3)), far)
    assert (image != blank).any(axis=-1).sum() == s * s
    with pytest.raises(ValueError, match="same length"):
        world_map.draw(points, colors[:2], np.zeros((0, 3)), far)


# ---------------------------------------------------------------------- web app


@pytest.fixture()
def client(oracle):
    # Starlette's TestClient calls itself "testserver": the app must be told to answer that name.
    with TestClient(create_app(oracle, handover_seconds=HANDOVER, allow_hosts=["testserver"])) as test_client:
        yield test_client


def open_scene(client):
    """A websocket session: its hello and first update."""
    ws = client.websocket_connect("/ws").__enter__()
    hello = ws.receive_json()
    assert hello["type"] == "hello" and hello["memory_modes"] == [] and hello["resolution"] == 64
    first = ws.receive_json()
    assert first["type"] == "update" and len(first["frames"]) == 1
    return ws, hello["token"], first


def test_page_and_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/play.js" in page.text and 'id="frame"' in page.text
    for asset in ("play.js", "play.css"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_websocket_drives_the_scene(client):
    ws, _, first = open_scene(client)
    ws.send_json({"type": "move", "action": TURN})
    moved = ws.receive_json()
    assert moved["type"] == "update" and len(moved["frames"]) == 2 and len(moved["depth"]) == 2
    assert moved["yaw"] == pytest.approx(first["yaw"] + 15.0, abs=1e-3)
    assert moved["frames"][-1] != first["frames"][0] and moved["map"].startswith("data:image/png;base64,")
    for bad in ({"type": "move", "action": [5, 0, 0, 0]}, {"type": "fly"}, [1, 2]):
        ws.send_json(bad)
        reply = ws.receive_json()
        assert reply["type"] == "error" and reply["message"]
    ws.send_text("not json")
    reply = ws.receive_json()
    assert reply["type"] == "error" and reply["message"].startswith("a request must be JSON")
    ws.send_json({"type": "reset", "seed": 3})
    reset = ws.receive_json()
    assert reset["frames"] == first["frames"] and reset["frames_generated"] == 0
    ws.__exit__(None, None, None)


def test_one_browser_session_owns_the_scene(client):
    ws, _, _ = open_scene(client)
    with client.websocket_connect("/ws") as other:
        assert other.receive_json() == {"type": "taken", "message": TAKEN}
    ws.__exit__(None, None, None)
    again, _, _ = open_scene(client)  # the scene is free once its owner left
    # A page that connects while its predecessor is leaving (a reload) gets the scene when it goes.
    threading.Timer(HANDOVER / 5, again.__exit__, (None, None, None)).start()
    reloaded, _, _ = open_scene(client)
    reloaded.__exit__(None, None, None)


def test_uploads_are_checked_and_bad_ones_change_nothing(client, oracle):
    ws, token, _ = open_scene(client)
    picture = png_bytes(np.full((90, 90, 3), 77, np.uint8))
    before = oracle.latest
    assert client.post("/api/start-image", content=picture).status_code == 403
    assert client.post("/api/start-image", content=picture, headers={"X-Mirage-Token": "guess"}).status_code == 403
    headers = {"X-Mirage-Token": token}
    bad = client.post("/api/start-image", content=b"%PDF-1.4 not an image", headers=headers)
    assert bad.status_code == 400 and "not an image" in bad.json()["detail"]
    big = client.post("/api/start-image", content=b"\0" * (10 * 2**20 + 1), headers=headers)
    assert big.status_code == 413 and "too large" in big.json()["detail"]
    chunks = iter([b"\0" * 2**20] * 11)  # no declared length (chunked): the server stops reading at the limit
    streamed = client.post("/api/start-image", content=chunks, headers=headers)
    assert streamed.status_code == 413 and "too large" in streamed.json()["detail"]
    assert oracle.latest is before
    good = client.post("/api/start-image", content=picture, headers=headers)
    assert good.status_code == 200 and good.json()["start_image"] is True
    assert (oracle.latest.rgb[0] == 77).all()
    ws.__exit__(None, None, None)


def test_the_owner_downloads_the_video(client):
    ws, token, _ = open_scene(client)
    ws.send_json({"type": "move", "action": TURN})
    ws.receive_json()
    assert client.get("/api/video").status_code == 403
    video = client.get("/api/video", params={"token": token})
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp" and "attachment" in video.headers["content-disposition"]
    ws.__exit__(None, None, None)


# ---------------------------------------------------------------------- command line


def test_missing_default_weights_name_the_oracle(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generators, "default_weights_path", lambda: tmp_path)
    assert cli.main(["play", "--port", "0"]) == 2
    assert "run: mirage-gym play --generator oracle" in capsys.readouterr().err


def test_a_taken_port_is_a_clear_error(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["play", "--generator", "oracle", "--resolution", "64", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# ---------------------------------------------------------------------- the page in a real browser


def find_chromium() -> str | None:
    """A Chromium or Chrome binary: ``MIRAGE_CHROMIUM``, else the first on ``PATH``."""
    if os.environ.get("MIRAGE_CHROMIUM"):
        return os.environ["MIRAGE_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture()
def served(oracle):
    """The app on a free local port, served by uvicorn in a thread."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(oracle, handover_seconds=HANDOVER), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture()
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found: install it (Debian/Ubuntu: apt-get install chromium) or set MIRAGE_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


def test_drive_the_page_in_a_headless_browser(browser, served, tmp_path):
    page = browser.new_page()
    page.goto(served)
    page.wait_for_function("document.getElementById('pose').textContent.startsWith('x ')")

    def snapshot():
        return page.eval_on_selector("#frame", "e => e.src"), page.text_content("#pose")

    def settle():  # wait for the reply to the last request and the end of its frames' playback
        page.wait_for_function("!window.miragePlay.pending")
        page.wait_for_timeout(300)

    frame0, pose0 = snapshot()
    page.keyboard.down("ArrowLeft")  # turn left: never blocked by walls
    page.wait_for_function("Number(document.body.dataset.framesReceived) >= 5")
    page.keyboard.up("ArrowLeft")
    settle()
    frame1, pose1 = snapshot()
    assert frame1 != frame0 and pose1 != pose0
    assert "frames/s" in page.text_content("#fps")

    page.keyboard.press("KeyQ")  # one tap is one step: look up
    settle()
    assert "pitch 15°" in page.text_content("#pose")

    looked_up = page.text_content("#pose")
    button = page.locator('[data-move="ArrowRight"]')  # the on-screen buttons move the camera too
    button.dispatch_event("pointerdown", {"pointerId": 1})
    page.wait_for_function(f"document.getElementById('pose').textContent !== {looked_up!r}")
    button.dispatch_event("pointerup", {"pointerId": 1})
    settle()
    assert "pitch 15°" in page.text_content("#pose")  # turned, still looking up

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    frame2, pose2 = snapshot()
    page.set_input_files("#upload", str(text_file))
    page.wait_for_selector("#message:not([hidden])")
    assert "not an image" in page.text_content("#message")
    assert snapshot() == (frame2, pose2)  # the scene is unchanged

    with page.expect_download() as download:  # the session as an mp4
        page.click("#save")
    assert download.value.suggested_filename == "mirage-play-seed3.mp4"
    assert Path(download.value.path()).read_bytes()[4:8] == b"ftyp"

    other = browser.new_page()  # a second browser session is told the scene is taken
    other.goto(served)
    other.wait_for_selector("#message:not([hidden])")
    assert "Another browser session" in other.text_content("#message")
    other.close()
    page.close()
