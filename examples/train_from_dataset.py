"""Train a small model from a collected dataset: an inverse-dynamics network reading the action off two frames.

    # a dataset from `mirage-gym collect` ...
    mirage-gym collect --generator oracle --resolution 32 --episodes 32 --max-episode-steps 20 --out datasets
    .venv/bin/python examples/train_from_dataset.py --out datasets --dataset-id mirage/mirageroom-random-v0
    # ... or one this script collects first (oracle generator, a few rooms, under a minute on a CPU)
    .venv/bin/python examples/train_from_dataset.py

The dataset is read back with ``minari.load_dataset``. Each transition gives the last frame
before a step and the last frame after it (RGB and depth) and the action taken between them;
a small CNN learns the action (forward, right, yaw, pitch) from the two frames. The script
prints the validation error next to that of always predicting the mean action, per component.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mirage_gym.data import collect

ACTION_NAMES = ("forward", "right", "yaw", "pitch")


def load_transitions(dataset_id: str, out: Path, max_depth: float = 8.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per episode: inputs ``[T, 8, H, W]`` (RGB and depth before and after each step) and actions ``[T, 4]``."""
    os.environ["MINARI_DATASETS_PATH"] = str(out)  # where minari looks for datasets
    import minari

    dataset = minari.load_dataset(dataset_id)
    if dataset.action_space.shape != (len(ACTION_NAMES),):
        raise SystemExit(f"{dataset_id} has actions {dataset.action_space}; this example needs the continuous ones")
    inputs, actions = [], []
    for episode in dataset.iterate_episodes():
        rgb = episode.observations["rgb"][:, -1].astype(np.float32) / 255.0  # last frame of each chunk [T+1, H, W, 3]
        depth = np.clip(episode.observations["depth"][:, -1], 0.0, max_depth) / max_depth  # [T+1, H, W, 1]
        frames = np.concatenate([rgb, depth], axis=-1).transpose(0, 3, 1, 2)  # [T+1, 4, H, W]
        inputs.append(np.concatenate([frames[:-1], frames[1:]], axis=1))
        actions.append(episode.actions.astype(np.float32))
    if not inputs:
        raise SystemExit(f"{dataset_id} holds no episodes yet")
    print(f"{dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} transitions, "
          f"frames {tuple(frames.shape[-2:])}")
    return inputs, actions


def inverse_dynamics_net(channels: int = 8, actions: int = len(ACTION_NAMES)) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, actions),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-id", help="a collected dataset (default: collect a small one first)")
    parser.add_argument("--out", type=Path, help="the Minari datasets folder it is in (or where to collect)")
    parser.add_argument("--episodes", type=int, default=16, help="episodes to collect when collecting")
    parser.add_argument("--steps", type=int, default=20, help="steps per collected episode")
    parser.add_argument("--resolution", type=int, default=32, help="frame size when collecting")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="mirage_datasets_") as tmp:
        train(args, args.out or Path(tmp))


def train(args: argparse.Namespace, out: Path) -> None:
    dataset_id = args.dataset_id
    if dataset_id is None:
        dataset_id = "mirage/example-random-v0"
        result = collect(dataset_id, episodes=args.episodes, num_envs=8, out=out, max_episode_steps=args.steps,
                         env_kwargs={"generator": "oracle", "resolution": args.resolution, "chunk": 2,
                                     "room_seeds": [0, 1, 2, 3]}, previews=False, progress=False)
        print(result.summary())

    inputs, actions = load_transitions(dataset_id, out)
    if len(inputs) < 2:
        raise SystemExit(f"{dataset_id} needs at least 2 episodes (one is held out)")
    split = max(1, len(inputs) // 5)  # whole episodes held out

    def tensors(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts))

    x_train, y_train = tensors(inputs[split:]), tensors(actions[split:])
    x_val, y_val = tensors(inputs[:split]), tensors(actions[:split])

    net = inverse_dynamics_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(args.seed)
    for iteration in range(args.iterations):
        batch = torch.randint(len(x_train), (64,), generator=generator)
        loss = nn.functional.mse_loss(net(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (iteration + 1) % 100 == 0:
            print(f"iteration {iteration + 1}: training MSE {loss.item():.4f}")

    with torch.no_grad():
        error = ((net(x_val) - y_val) ** 2).mean(0)
    baseline = ((y_train.mean(0) - y_val) ** 2).mean(0)
    print(f"validation on {len(x_val)} held-out transitions (MSE per action; predicting the mean action):")
    for name, e, b in zip(ACTION_NAMES, error.tolist(), baseline.tolist()):
        print(f"  {name:<8} {e:.4f}  ({b:.4f})")
    print(f"validation MSE {error.mean().item():.4f} vs {baseline.mean().item():.4f} predicting the mean action")


if __name__ == "__main__":
    main()
