"""The evaluation metrics on cases with known answers, and `mirage-gym eval` on a tiny random generator."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch

from mirage_gym.cli import main
from mirage_gym.envs import OracleGenerator
from mirage_gym.eval import (
    KINDS,
    MOVES,
    EvalConfig,
    Move,
    camera_control_error,
    evaluate,
    flow_error,
    induced_flow,
    eval_trajectories,
    make_trajectory,
    observed_filter_counts,
    observed_mask,
    optical_flow,
    relative_pose,
    render_truth,
    reprojection_ceiling,
    reprojection_error,
    revisit_pairs,
    rollout,
)
from mirage_gym.geometry import intrinsics_from_fov, pose_from_position_yaw_pitch, position_yaw_pitch_from_pose
from mirage_gym.metrics import direction_error_deg, end_point_error, l1, psnr, rotation_error_deg, ssim, to_unit_chw
from mirage_gym.world import Renderer, make_scene
from tiny_generator import CHUNK, RESOLUTION, build_tiny_generator, save_tiny_generator

SIZE = 128
K = intrinsics_from_fov(90.0, SIZE, SIZE)


@pytest.fixture(scope="module")
def rotation() -> tuple[torch.Tensor, ...]:
    """Ground truth of a held-out room seen before and after a pure 5 degree turn left."""
    scene = make_scene(1_000_000)
    start = scene.sample_pose(np.random.default_rng(0))
    position, yaw, _ = position_yaw_pitch_from_pose(start)
    poses = pose_from_position_yaw_pitch(
        position[None].repeat(2, 1), torch.stack([yaw, yaw + math.radians(5.0)]), torch.zeros(2)
    )
    out = Renderer(scene).render(poses, K, SIZE, SIZE)
    return out.rgb, out.depth, poses


def smooth_texture(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture (blurred noise): trackable everywhere."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (size, size, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- metrics


def test_identical_frames_are_perfect():
    frames = to_unit_chw(torch.from_numpy(smooth_texture(48))[None])
    assert psnr(frames, frames).item() == pytest.approx(100.0)  # the eps cap: never inf
    assert ssim(frames, frames).item() == pytest.approx(1.0, abs=1e-5)
    assert l1(frames, frames).item() == 0.0
    noisy = (frames + 0.1).clamp(0, 1)
    assert psnr(noisy, frames).item() < 25.0 and ssim(noisy, frames).item() < 1.0


def test_masked_metrics_with_an_empty_mask_are_nan_not_perfect():
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert math.isnan(l1(a, b, empty).item())
    assert math.isnan(end_point_error(torch.zeros(1, 4, 4, 2), torch.ones(1, 4, 4, 2), empty).item())


def test_pose_error_angles():
    rot = pose_from_position_yaw_pitch(torch.zeros(2, 3), torch.tensor([0.0, math.radians(7.0)]), torch.zeros(2))
    assert rotation_error_deg(rot[1, :3, :3], rot[0, :3, :3]).item() == pytest.approx(7.0, abs=1e-4)
    assert rotation_error_deg(rot[0, :3, :3], rot[0, :3, :3]).item() == pytest.approx(0.0, abs=1e-4)
    assert direction_error_deg(torch.tensor([1.0, 0, 0]), torch.tensor([5.0, 5.0, 0])).item() == pytest.approx(45.0)
    assert end_point_error(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), 3.0)).item() == pytest.approx(18**0.5)


# ---------------------------------------------------------------------- flow


def test_optical_flow_recovers_a_known_shift():
    image = smooth_texture(96)
    dx, dy = 3, -2
    src = image[16:80, 16:80]
    dst = image[16 - dy : 80 - dy, 16 - dx : 80 - dx]  # dst(p) = src(p - d): src(p) moves to p + d
    flow = optical_flow(torch.from_numpy(src)[None], torch.from_numpy(np.ascontiguousarray(dst))[None])[0]
    inner = flow[8:-8, 8:-8].reshape(-1, 2)
    assert inner.median(0).values.tolist() == pytest.approx([dx, dy], abs=0.15)


def test_induced_flow_of_a_sideways_step_in_front_of_a_wall():
    depth = torch.full((1, 16, 16), 2.0)
    k = intrinsics_from_fov(90.0, 16, 16)  # f = 8 px
    a = pose_from_position_yaw_pitch(torch.zeros(1, 3), torch.zeros(1), torch.zeros(1))
    b = a.clone()
    b[:, :3, 3] += 0.1 * a[:, :3, 0]  # 10 cm to the camera's right
    flow, valid = induced_flow(depth, depth, a, b, k)
    # A point at depth 2 m moves left by f * 0.1 / 2 = 0.4 px; the vertical flow is zero.
    assert valid.float().mean() > 0.9
    assert torch.allclose(flow[valid], torch.tensor([-0.4, 0.0]).expand_as(flow[valid]), atol=1e-4)


def test_pure_rotation_flow_error_is_near_zero_and_independent_of_depth(rotation):
    rgb, depth, poses = rotation
    flow, valid = induced_flow(depth[:1], depth[1:], poses[:1], poses[1:], K)
    flow_far, valid_far = induced_flow(depth[:1] * 3, depth[1:] * 3, poses[:1], poses[1:], K)
    assert torch.allclose(flow[valid & valid_far], flow_far[valid & valid_far], atol=1e-3)  # rotation: no parallax
    assert flow[valid][:, 0].mean() > 3.0  # turning left moves the image right
    epe = flow_error(rgb, depth, poses, K)
    assert epe.shape == (1,) and epe.item() < 0.6
    wrong = poses.clone()
    wrong[1] = poses[0]  # claim the camera did not move
    assert flow_error(rgb, depth, wrong, K).item() > 3 * epe.item()


# ---------------------------------------------------------------------- 3D consistency and camera control


def test_reprojection_of_ground_truth_is_near_zero(rotation):
    rgb, depth, poses = rotation
    exact = reprojection_error(rgb[:1], rgb[1:], depth[:1], depth[1:], poses[:1], poses[1:], K)
    assert exact.valid_fraction.item() > 0.8 and exact.l1.item() < 0.02
    wrong = pose_from_position_yaw_pitch(*[torch.stack([v, v]) for v in position_yaw_pitch_from_pose(poses[0])])
    off = reprojection_error(rgb[:1], rgb[1:], depth[:1], depth[1:], wrong[:1], wrong[1:], K)
    assert off.l1.item() > 2 * exact.l1.item()


def test_camera_control_on_a_pure_rotation(rotation):
    rgb, depth, poses = rotation
    pose = relative_pose(rgb[0], rgb[1], depth[0], K)
    assert pose is not None
    commanded = torch.linalg.inv(poses[1]) @ poses[0]
    assert rotation_error_deg(pose[:3, :3], commanded[:3, :3]).item() < 0.5
    assert pose[:3, 3].norm().item() < 0.05  # no translation found where there is none
    control = camera_control_error(rgb, depth, poses, K, [(0, 1)])
    assert bool(control.recovered[0]) and control.rotation_deg[0].item() < 0.5
    assert math.isnan(control.translation_deg[0].item())  # no commanded translation: no direction to compare


def test_revisit_pairs_of_the_fixed_trajectories():
    look = make_trajectory("look_around", 1_000_000, 13)
    assert revisit_pairs(look.cam_to_world) == [(0, 12)]
    walk = make_trajectory("walk_and_return", 1_000_000, 12)  # 4 out, 4 turning, 4 back
    assert revisit_pairs(walk.cam_to_world) == [(3, 8), (2, 9), (1, 10), (0, 11)]
    still = walk.cam_to_world[:1].repeat(5, 1, 1)  # the same pose without turning away is not a revisit
    assert revisit_pairs(still) == []


def test_observed_mask_marks_what_was_seen_before(rotation):
    _, depth, poses = rotation
    twice = observed_mask(depth[[0, 0]], poses[[0, 0]], K)
    assert not twice[0].any() and twice[1].all()
    turned = observed_mask(depth, poses, K)
    assert 0.5 < turned[1].float().mean() < 1.0  # a 5 degree turn reveals a strip on the left
    # Seen by the start frame only: frame 2 does not count what frame 1 showed first.
    seen = observed_mask(depth[[0, 1, 1]], poses[[0, 1, 1]], K, sources=1)
    assert torch.equal(seen[1], turned[1]) and torch.equal(seen[2], seen[1])
    everything = observed_mask(depth[[0, 1, 1]], poses[[0, 1, 1]], K)
    assert everything[2].all() and seen[2].float().mean() < 1.0


def test_trajectories_are_held_out():
    with pytest.raises(ValueError, match="held out"):
        make_trajectory("orbit", 5, 9)
    with pytest.raises(ValueError, match="kind"):
        make_trajectory("spiral", 1_000_000, 9)


def test_detail_ratio_tells_blur_from_detail_and_respects_masks():
    from mirage_gym.metrics import detail_ratio, reconstruction_figures

    sharp = torch.rand(3, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, 1, 1, count_include_pad=False)
    assert torch.allclose(detail_ratio(sharp, sharp), torch.ones(3))
    assert (detail_ratio(blurred, sharp) < 0.6).all()
    assert (detail_ratio(sharp, blurred) > 1.5).all()  # noise or ringing scores above 1
    # Brightness and a constant offset do not change the gradients.
    assert torch.allclose(detail_ratio((sharp + 0.1), sharp), torch.ones(3))
    # Masked: only differences inside the mask count; an empty mask is NaN, not a score.
    mask = torch.zeros(3, 32, 32, dtype=torch.bool)
    mask[0, :, :16] = True
    half = sharp.clone()
    half[0, :, :, 16:] = 0.5  # flat outside the mask
    ratio = detail_ratio(half, sharp, mask)
    assert ratio[0].item() == pytest.approx(1.0) and ratio[1:].isnan().all()
    assert detail_ratio(half, sharp, mask, pooled=True).item() == pytest.approx(1.0)
    figures = reconstruction_figures(blurred, sharp)
    assert figures["psnr_worst_decile"] <= figures["psnr"] and figures["detail_ratio"] < 0.6


# ---------------------------------------------------------------------- full runs


def test_oracle_is_near_perfectly_consistent():
    config = EvalConfig(resolution=64, chunk=2, rooms=1, kinds=("walk_and_return", "look_around"),
                        chunks={"walk_and_return": 4, "look_around": 6})
    result = evaluate(OracleGenerator(), config, progress=False)
    oracle = result.summary["oracle"]
    assert list(result.summary) == ["oracle"]
    assert oracle["revisit_psnr"] == pytest.approx(100.0) and oracle["revisit_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert oracle["fidelity_psnr"] == pytest.approx(100.0) and oracle["depth_abs_rel"] == 0.0
    assert oracle["fidelity_start_psnr"] == pytest.approx(100.0)
    assert oracle["reproj_l1"] < 0.03
    # Against the ground truth of the first view too, and the ground truth keeps all of its own detail.
    assert oracle["revisit_psnr_gt"] == pytest.approx(100.0)
    assert oracle["detail_cached"] == pytest.approx(1.0) and oracle["detail_new"] == pytest.approx(1.0)
    assert result.autoencoder is None  # the renderer has no autoencoder


def test_depth_and_fidelity_split_into_start_view_and_painted_surfaces():
    # Frame 1 of a still camera: its left half was in the start frame, its right half was first shown by a
    # generated frame. The rollout is exact on the left and twice too far, with other colours, on the right.
    from mirage_gym.eval.runner import GroundTruth, Rollout, score

    n, size = 3, 32
    k = intrinsics_from_fov(90.0, size, size)
    poses = torch.eye(4).repeat(n, 1, 1)
    rgb = torch.randint(0, 256, (n, size, size, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    depth = torch.full((n, size, size), 2.0)
    observed = torch.ones(n, size, size, dtype=torch.bool)
    observed[0] = False
    start_seen = observed.clone()
    start_seen[:, :, size // 2:] = False
    truth = GroundTruth(rgb, depth, torch.ones_like(observed), observed, None, start_seen)
    run_rgb, run_depth = rgb.clone(), depth.clone()
    run_rgb[:, :, size // 2:] = 255 - rgb[:, :, size // 2:]
    run_depth[:, :, size // 2:] = 4.0
    run = Rollout("latent", run_rgb, run_depth, [0.1], [{}], [0], None, None)
    figures = score(run, truth, poses, k)
    assert figures["depth_start_abs_rel"] == 0.0 and figures["depth_painted_abs_rel"] == pytest.approx(1.0)
    assert figures["depth_abs_rel"] == pytest.approx(0.5)
    assert figures["fidelity_start_psnr"] == pytest.approx(100.0)
    # Over both halves the squared error is half the painted half's: 3 dB better.
    assert figures["fidelity_psnr"] == pytest.approx(figures["fidelity_painted_psnr"] + 10 * math.log10(2), abs=1e-3)


def test_evaluate_rejects_bad_configs():
    with pytest.raises(ValueError, match="modes"):
        evaluate(OracleGenerator(), EvalConfig(modes=("latent", "latent")), progress=False)
    with pytest.raises(ValueError, match="only runs mode 'oracle'"):
        evaluate(OracleGenerator(), EvalConfig(modes=("latent",)), progress=False)
    with pytest.raises(ValueError, match="frame_time"):
        evaluate(OracleGenerator(frame_time=0.5), EvalConfig(), progress=False)


def test_dynamic_token_count_follows_the_memory_write():
    path = make_trajectory("random_walk", 1_000_002, 1 + 2 * CHUNK, moving_objects=4)
    k = intrinsics_from_fov(90.0, RESOLUTION, RESOLUTION)
    truth = render_truth(path, k, RESOLUTION, 0.25)
    gen = build_tiny_generator()
    gen.rewrite_cached = True  # every kept token is handed to the memory, cached cell or not
    counts = {}
    for name, keep in (("all", True), ("none", False)):
        # A filter that keeps everything (or nothing): every (no) visible moving-object token is written.
        gen.token_filter = lambda rgb, depth, poses, intr, latent_size, keep=keep: torch.full(
            (*rgb.shape[:2], *latent_size), keep)
        run = rollout(gen, path, truth, k, CHUNK, mode="latent")
        counts[name] = (run.dynamic_written, run.dynamic_visible)
    assert counts["all"][1] > 0 and counts["all"][0] == counts["all"][1]
    assert counts["none"] == (0, counts["all"][1])
    # Without the write-back, cells the memory already held are not written again: the count is the
    # generator's own record of its write, so it drops (a re-run of the filter would not see this).
    gen.rewrite_cached = False
    gen.token_filter = lambda rgb, depth, poses, intr, latent_size: torch.full((*rgb.shape[:2], *latent_size), True)
    run = rollout(gen, path, truth, k, CHUNK, mode="latent")
    assert run.dynamic_visible == counts["all"][1] and run.dynamic_written < counts["all"][0]


def test_eval_command_on_a_tiny_random_generator(tmp_path, capsys):
    folder = save_tiny_generator(tmp_path / "model")
    out = tmp_path / "results"
    code = main(["eval", "--generator", str(folder), "--out", str(out), "--quick", "--resolution", str(RESOLUTION),
                 "--chunk", str(CHUNK), "--kinds", "walk_and_return", "--observed-margin", "0.3", "--anchor-depth",
                 "--filter-history", "2", "--cache-footprint", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| mode |" in printed and "| latent |" in printed and "| oracle |" in printed
    data = json.loads((out / "eval.json").read_text())
    assert data["provenance"]["command"] and data["provenance"]["libraries"]["torch"] == torch.__version__
    assert data["config"]["args"]["observed_margin"] == 0.3 and data["config"]["args"]["anchor_depth"] is True
    assert data["config"]["args"]["filter_history"] == 2 and data["config"]["args"]["cache_footprint"] == 3
    summary = data["results"]["summary"]
    assert set(summary) == {"latent", "pixel", "none", "oracle"}
    assert summary["none"]["memory_bytes"] == 0 < summary["latent"]["memory_bytes"] < summary["pixel"]["memory_bytes"]
    assert summary["oracle"]["revisit_psnr"] > summary["latent"]["revisit_psnr"]
    for mode in ("latent", "pixel", "none"):  # the new figures, per memory mode
        assert math.isfinite(summary[mode]["revisit_psnr_gt"]) and summary[mode]["revisit_psnr_gt"] < 100
        assert summary[mode]["detail_cached"] >= 0 and summary[mode]["detail_new"] >= 0
        assert 0 < summary[mode]["depth_start_abs_rel"] < math.inf
        assert 0 < summary[mode]["depth_painted_abs_rel"] < math.inf and summary[mode]["fidelity_painted_psnr"] < 100
    assert all("detail_new" in row and "revisit_ssim_gt" in row for row in data["results"]["rows"])
    for entry in summary.values():  # one trajectory: every resample is that trajectory
        assert entry["trajectories"] == 1
        assert all(entry["ci95"][key] == [entry[key]] * 2 for key in entry["ci95"] if entry[key] is not None)
    assert "95 % bootstrap intervals of the means above" in printed
    # The generator's autoencoder on held-out frames (64 with --quick).
    autoencoder = data["results"]["autoencoder"]
    assert autoencoder["frames"] == 64 and autoencoder["psnr_worst_decile"] <= autoencoder["psnr"]
    # The cache's reprojection ceiling (4 held-out views with --quick), each move below the autoencoder's view
    # of B only by what the read loses.
    reprojection = data["results"]["reprojection"]
    assert reprojection["views"] == 4 and set(reprojection["moves"]) <= {m.name for m in MOVES}
    assert all(math.isfinite(e["nearest"]) and math.isfinite(e["bilinear"]) and 0 < e["covered"] <= 1
               for e in reprojection["moves"].values())
    table = (out / "eval_table.md").read_text()
    assert "revisit PSNR vs GT dB" in table and "detail new areas" in table and "worst-decile PSNR dB" in table
    assert "depth abs-rel on start view" in table and "depth abs-rel where painted" in table
    assert "Reprojection ceiling" in table and "| yaw 5 deg |" in table
    assert (out / "eval_metrics.png").stat().st_size > 0 and (out / "eval_fidelity.png").stat().st_size > 0
    assert (out / "provenance.json").is_file() and (out / "eval_table.md").is_file()
    # walk_and_return comes back to its start pose: one strip, ground truth | autoencoder | the four modes.
    strip = cv2.imread(str(out / "strips" / "revisit_strips.png"))
    assert strip is not None and strip.shape[1] == 6 * 2 * RESOLUTION + 5 * 4
    assert len(list((out / "strips").glob("walk_and_return_*.png"))) == 1
    # The run paired with itself: every figure the same, none told apart.
    assert main(["eval", "compare", str(out), str(out / "eval.json")]) == 0
    printed = capsys.readouterr().out
    assert "| depth abs-rel | " in printed and "mode latent:" in printed and "mode oracle:" in printed
    assert " better |" not in printed and " worse |" not in printed and "| within noise |" in printed


def test_reprojection_ceiling_is_the_autoencoder_without_a_move():
    vae = build_tiny_generator().vae
    moves = (Move("still"), Move("yaw 30 deg", yaw_deg=30.0))
    result = reprojection_ceiling(vae, resolution=RESOLUTION, fov_deg=90.0, views=2, voxel_size=0.01, moves=moves)
    still, moved = result["moves"]["still"], result["moves"]["yaw 30 deg"]
    # Read from its own camera, the cache gives the view's own latents back: both reads are the autoencoder.
    assert still["nearest"] == pytest.approx(still["autoencoder"], abs=1e-3)
    assert still["bilinear"] == pytest.approx(still["autoencoder"], abs=1e-3)
    assert still["pairs"] == moved["pairs"] == 2 and still["covered"] > moved["covered"] > 0
    with pytest.raises(ValueError, match="views"):
        reprojection_ceiling(vae, resolution=RESOLUTION, fov_deg=90.0, views=0)


def test_the_memory_filter_is_scored_on_rendered_chunks_with_moving_objects():
    generator = build_tiny_generator()
    k = intrinsics_from_fov(90.0, SIZE, SIZE)  # the tiny generator's 8x tokens need the size to cover a box
    path = eval_trajectories(("random_walk",), 2, CHUNK, {"random_walk": 12}, moving_objects=3, seed=2)[1]
    truth = render_truth(path, k, SIZE, 0.25)
    assert not truth.static.all()  # the walk shows its moving boxes
    counts = observed_filter_counts(generator, path, truth, k, CHUNK)
    exact = counts["true_depth"]
    # With the true depth the rule sees the boxes move: it keeps only some of their tokens, and almost every
    # static token.
    assert 0 < exact["dynamic_visible"] and exact["dynamic_kept"] < exact["dynamic_visible"]
    assert 0 < exact["static"] and exact["static_dropped"] < 0.05 * exact["static"]
    assert counts["model_depth"]["dynamic_visible"] == exact["dynamic_visible"]

    # write_decision is the generator's own filter on the chunk, and changes nothing.
    generator.start(truth.rgb[:1], path.cam_to_world[:1], k)
    before = generator.memory_bytes()
    frames = slice(1, 1 + CHUNK)
    decision = generator.write_decision(truth.rgb[None, frames], path.cam_to_world[None, frames], k,
                                        depth=truth.depth[None, frames])
    direct = generator.token_filter.analyze(truth.rgb[None, frames], truth.depth[None, frames],
                                            path.cam_to_world[None, frames], k,
                                            latent_size=(SIZE // 8, SIZE // 8))
    assert torch.equal(decision.keep, direct.keep) and generator.memory_bytes() == before
    with pytest.raises(ValueError, match="uint8"):
        generator.write_decision(truth.rgb[None, frames].float(), path.cam_to_world[None, frames], k)
    with pytest.raises(ValueError, match="depth must be"):
        generator.write_decision(truth.rgb[None, frames], path.cam_to_world[None, frames], k,
                                 depth=truth.depth[None, 1:2])

    # With filter history, the frames before each chunk go to the filter too: it keeps fewer box tokens and the
    # same visible ones (and write_decision passes its first frames as that history).
    generator.filter_history = CHUNK
    remembered = observed_filter_counts(generator, path, truth, k, CHUNK)["true_depth"]
    assert remembered["dynamic_visible"] == exact["dynamic_visible"]
    assert remembered["dynamic_kept"] < exact["dynamic_kept"]
    shown = slice(1, 1 + 2 * CHUNK)
    decision = generator.write_decision(truth.rgb[None, shown], path.cam_to_world[None, shown], k,
                                        depth=truth.depth[None, shown], history=CHUNK)
    direct = generator.token_filter.analyze(
        truth.rgb[None, 1 + CHUNK : 1 + 2 * CHUNK], truth.depth[None, 1 + CHUNK : 1 + 2 * CHUNK],
        path.cam_to_world[None, 1 + CHUNK : 1 + 2 * CHUNK], k, latent_size=(SIZE // 8, SIZE // 8),
        history=(truth.rgb[None, 1 : 1 + CHUNK], truth.depth[None, 1 : 1 + CHUNK],
                 path.cam_to_world[None, 1 : 1 + CHUNK]))
    assert torch.equal(decision.keep, direct.keep) and decision.keep.shape[1] == CHUNK
    with pytest.raises(ValueError, match="history must be in"):
        generator.write_decision(truth.rgb[None, frames], path.cam_to_world[None, frames], k, history=CHUNK)
    generator.filter_history = 0

    # A walk without moving objects gives the filter nothing to be scored on.
    still = eval_trajectories(("walk_and_return",), 1, CHUNK, {"walk_and_return": 2}, moving_objects=0)[0]
    assert observed_filter_counts(generator, still, render_truth(still, k, SIZE, 0.25), k, CHUNK) is None


@pytest.mark.parametrize("bad", ["-0.1", "none"])
def test_eval_refuses_a_bad_observed_margin_before_anything_runs(tmp_path, capsys, bad):
    with pytest.raises(SystemExit):
        main(["eval", "--generator", "oracle", "--out", str(tmp_path / "out"), "--observed-margin", bad])
    assert "--observed-margin" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["-1", "two"])
def test_eval_refuses_a_bad_filter_history_before_anything_runs(tmp_path, capsys, bad):
    with pytest.raises(SystemExit):
        main(["eval", "--generator", "oracle", "--out", str(tmp_path / "out"), "--filter-history", bad])
    assert "--filter-history" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", [["--anchor-depth"], ["--filter-history", "4"], ["--observed-margin", "off"],
                                  ["--cache-guidance", "0.5"]])
def test_eval_refuses_a_generator_setting_for_the_oracle(tmp_path, capsys, flag):
    code = main(["eval", "--generator", "oracle", "--out", str(tmp_path / "out"), "--quick", *flag])
    assert code != 0 and f"{flag[0]} needs a generative model, not 'oracle'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "eval.json").exists()


# ---------------------------------------------------------------------- eval compare


def _eval_folder(folder, rows: list[dict], **config) -> str:
    """An eval.json as `mirage-gym eval` writes it, holding ``rows`` (latent mode)."""
    from mirage_gym.eval.runner import EvalResult, summarize
    from mirage_gym.provenance import write_results

    result = EvalResult(config=asdict(EvalConfig(**{"rooms": 2, **config})), generator=str(folder), rows=rows,
                        summary=summarize(rows, ["latent"]))
    write_results(folder, "eval", result.to_dict())
    return str(folder)


def _rows(figures) -> list[dict]:
    """One latent row per trajectory of 4 kinds x 2 rooms, ``figures(i)`` its METRICS."""
    from mirage_gym.eval.runner import METRICS

    rows = []
    for i, (kind, room) in enumerate((k, r) for k in KINDS for r in (1_000_000, 1_000_100)):
        values = {key: float(i) for key, _, _ in METRICS} | figures(i)
        rows.append({"kind": kind, "room_seed": room, "mode": "latent", **values, "seconds_per_chunk": 0.1,
                     "memory_bytes": 1, "dynamic_tokens_written": 0, "dynamic_tokens_visible": 0})
    return rows


def test_eval_compare_tells_a_paired_difference_from_noise(tmp_path, capsys):
    base = _eval_folder(tmp_path / "base", _rows(lambda i: {"depth_abs_rel": 0.3 + 0.1 * i}))
    # Depth 0.05 lower on every trajectory (better), revisit 1 dB lower (worse), fidelity +-1 dB in turn
    # (no difference), reproj L1 0.2 higher on one trajectory of eight (its mean moves, its interval holds 0).
    other = _eval_folder(tmp_path / "other", _rows(lambda i: {
        "depth_abs_rel": 0.25 + 0.1 * i, "revisit_psnr": i - 1.0, "fidelity_psnr": i + (1.0 if i % 2 else -1.0),
        "reproj_l1": i + (0.2 if i == 3 else 0.0), "fidelity_painted_psnr": math.nan}))
    out = tmp_path / "cmp"
    assert main(["eval", "compare", base, other, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| depth abs-rel | 0.650 | 0.600 | -0.050 | [-0.050, -0.050] | better |" in printed
    figures = json.loads((out / "compare.json").read_text())["results"]["modes"]["latent"]
    assert figures["revisit_psnr"]["verdict"] == "worse" and figures["revisit_psnr"]["difference"] == pytest.approx(-1)
    assert figures["fidelity_psnr"]["verdict"] == "within noise" and figures["fidelity_psnr"]["difference"] == 0
    low, high = figures["fidelity_psnr"]["ci"]
    assert -1 < low < 0 < high < 1
    assert figures["reproj_l1"]["difference"] == pytest.approx(0.025)
    assert figures["reproj_l1"]["verdict"] == "within noise" and figures["reproj_l1"]["ci"][0] == 0
    assert figures["fidelity_painted_psnr"] == {"pairs": 0, "higher_is_better": True, "base": None, "other": None,
                                                "difference": None, "ci": [None, None], "verdict": "n/a"}
    assert figures["revisit_ssim"] == {"pairs": 8, "higher_is_better": True, "base": 3.5, "other": 3.5,
                                       "difference": 0.0, "ci": [0.0, 0.0], "verdict": "within noise"}
    assert (out / "compare.md").read_text().startswith("base: ")
    # Each run's own summary: the mean over its 8 trajectories, inside its bootstrap interval.
    summary = json.loads((tmp_path / "base" / "eval.json").read_text())["results"]["summary"]["latent"]
    assert summary["trajectories"] == 8 and summary["revisit_ssim"] == 3.5
    low, high = summary["ci95"]["revisit_ssim"]
    assert 0 < low < 3.5 < high < 7


def test_eval_compare_refuses_runs_of_other_trajectories_and_keeps_earlier_results(tmp_path, capsys):
    rows = _rows(lambda i: {})
    base = _eval_folder(tmp_path / "base", rows)
    out = tmp_path / "cmp"
    assert main(["eval", "compare", base, base, "--out", str(out)]) == 0
    before = (out / "compare.json").read_text()
    capsys.readouterr()
    refused = {
        "seed 0 vs 1": _eval_folder(tmp_path / "seed", rows, seed=1),
        "rooms 2 vs 3": _eval_folder(tmp_path / "rooms", rows, rooms=3),
        "in one only: [('random_walk', 1000100)]": _eval_folder(tmp_path / "short", rows[:-1]),
        "is not a `mirage-gym eval` results folder": str(tmp_path / "nothing"),
    }
    for message, other in refused.items():
        assert main(["eval", "compare", base, other, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"results": {"rows": []}}')
    assert main(["eval", "compare", base, str(tmp_path / "broken.json"), "--out", str(out)]) == 2
    assert "not a `mirage-gym eval` result (no results.rows / results.config)" in capsys.readouterr().err
    assert main(["eval", "compare", base, base, "--modes", "pixel", "--out", str(out)]) == 2
    assert "mirage-gym eval compare: error: mode(s) ['pixel'] are not in both runs" in capsys.readouterr().err
    assert (out / "compare.json").read_text() == before
