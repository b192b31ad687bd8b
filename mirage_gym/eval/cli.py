"""`mirage-gym eval`: score a generator on the held-out evaluation trajectories, in every memory mode.

Writes ``eval.json`` (every row, the summary, the provenance), ``eval_metrics.png``,
``eval_fidelity.png`` and ``strips/`` (per held-out house that the camera comes back to: ground
truth | autoencoder | each mode on the return) to ``--out`` and prints the summary as a markdown table.
"""

from __future__ import annotations

import argparse

import torch

from mirage_gym.eval.report import markdown_table, plot_fidelity, plot_summary, save_strips
from mirage_gym.eval.runner import MODES, EvalConfig, evaluate
from mirage_gym.eval.trajectories import KINDS
from mirage_gym.memory.latent_cache import INTERPOLATIONS
from mirage_gym.provenance import results_folder, write_results
from mirage_gym.config import load_config


def _frames(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _margin(text: str) -> float | str:
    if text == "off":
        return text
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'off', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", default="default",
                        help="'default' (shipped weights), 'oracle' (ground truth) or a model folder")
    # Not required=True: argparse would then demand it of `mirage-gym eval rl ...` too; run() checks it.
    parser.add_argument("--out", default=None, help="results folder (JSON, plots, provenance; required)")
    parser.add_argument("--quick", action="store_true", help="one room per kind, short paths (a minute or two)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="memory modes to compare")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="trajectory kinds")
    parser.add_argument("--rooms", type=int, default=None, help="held-out rooms per kind (default 8, quick 1)")
    parser.add_argument("--config", default="default", help="model config giving resolution, fov and chunk")
    parser.add_argument("--resolution", type=int, default=None, help="frame size (default: the config's)")
    parser.add_argument("--chunk", type=int, default=None, help="frames per chunk (default: the config's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    parser.add_argument("--cache-interpolation", choices=INTERPOLATIONS, default=None,
                        help="how the cache places tokens in a moved view (default: the model's)")
    parser.add_argument("--cache-footprint", type=_positive, default=None, metavar="N",
                        help="cells a side a cached token covers at most when seen from nearer than it was written "
                             "(default: the model's)")
    parser.add_argument("--cache-guidance", type=float, default=None,
                        help="hold cached cells to the cache while denoising, 0-1 (default: the model's)")
    parser.add_argument("--rewrite-cached", action=argparse.BooleanOptionalAction, default=None,
                        help="write back cells read from the memory too (default: the model's)")
    parser.add_argument("--observed-margin", type=_margin, default=None, metavar="MARGIN",
                        help="keep generated tokens out of the start frame's observed space, up to MARGIN (relative "
                             "depth) behind its surfaces; 'off' writes them there too (default: the model's)")
    parser.add_argument("--anchor-depth", action=argparse.BooleanOptionalAction, default=None,
                        help="return the cached surface's depth where the memory covers a cell (default: the model's)")
    parser.add_argument("--filter-history", type=_frames, default=None, metavar="N",
                        help="frames before each chunk the token filter also projects it into (default: the model's)")
    parser.add_argument("--moving-objects", type=int, default=2, help="moving boxes in the random-walk rooms")
    parser.add_argument("--seed", type=int, default=0, help="trajectory and noise seed")
    parser.add_argument("--autoencoder-frames", type=int, default=None,
                        help="held-out frames of the autoencoder reconstruction figure (default 256, quick 64; 0: none)")
    parser.add_argument("--reprojection-views", type=int, default=None,
                        help="held-out views of the cache's reprojection ceiling (default 12, quick 4; 0: none)")
    parser.add_argument("--device", default="cpu", help="torch device of the generator")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mirage_gym.envs import load_generator

    if args.out is None:
        raise ValueError("--out is required (the results folder)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_config(args.config).model
    overrides = dict(
        resolution=args.resolution or model.resolution, fov_deg=model.fov_deg, chunk=args.chunk or model.chunk_frames,
        modes=tuple(args.modes), kinds=tuple(args.kinds), moving_objects=args.moving_objects, seed=args.seed,
    )
    if args.rooms is not None:
        overrides["rooms"] = args.rooms
    if args.autoencoder_frames is not None:
        overrides["autoencoder_frames"] = args.autoencoder_frames
    if args.reprojection_views is not None:
        overrides["reprojection_views"] = args.reprojection_views
    config = EvalConfig.quick(**overrides) if args.quick else EvalConfig(**overrides)
    config.validate()
    out = results_folder(args.out)
    generator = load_generator(args.generator, memory="latent", num_inference_steps=args.steps, device=args.device,
                               frame_time=config.frame_time)
    if args.cache_guidance is not None and not 0.0 <= args.cache_guidance <= 1.0:
        raise ValueError(f"--cache-guidance must be in [0, 1], got {args.cache_guidance}")
    overrides = {"cache_guidance": args.cache_guidance, "cache_interpolation": args.cache_interpolation,
                 "cache_footprint": args.cache_footprint,
                 "rewrite_cached": args.rewrite_cached, "observed_margin": args.observed_margin,
                 "filter_history": args.filter_history, "anchor_depth": args.anchor_depth}
    for setting, value in overrides.items():  # None: the model's own
        if value is None:
            continue
        if not hasattr(generator, setting):
            raise ValueError(f"--{setting.replace('_', '-')} needs a generative model, not {args.generator!r}")
        setattr(generator, setting, None if value == "off" else value)
    name = str(args.generator)
    print(f"evaluating {name} ({type(generator).__name__}) at {config.resolution}x{config.resolution}, chunks of "
          f"{config.chunk}, modes {list(config.modes)}, rooms from the held-out seeds", flush=True)
    result = evaluate(generator, config, name=name, progress=not args.no_progress)
    table = markdown_table(result)
    print(table)
    path = write_results(out, "eval", result.to_dict(), config={"args": {k: v for k, v in vars(args).items()
                                                                         if not k.startswith("_")}})
    (out / "eval_table.md").write_text(table + "\n")
    plots = [plot_summary(result, out / "eval_metrics.png"), plot_fidelity(result, out / "eval_fidelity.png")]
    strips = save_strips(result, out / "strips")
    print(f"wrote {path}, {out / 'eval_table.md'}, " + ", ".join(str(p) for p in plots)
          + (f", {len(result.strips)} revisit strips in {out / 'strips'}" if strips else ""))
    return 0
