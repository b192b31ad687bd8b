"""Collection fanned out over Ray actors, for collections that outgrow one machine.

Each actor holds one :class:`~mirage_gym.data.rollout.EpisodeRunner` (a batched vector env,
its generator and the policy) and streams its finished episodes back as a Ray generator; the
driver is the only writer, so the workers' episodes land in one dataset, in plan order.
Episode ``k`` is played from seed ``seed + k`` whichever actor plays it, so the episodes are
those a local collection gives.

Ray is optional (``pip install 'mirage-gym[distributed]'``). Without a running Ray, a local
instance is started (and stopped at the end); ``address`` or ``$RAY_ADDRESS`` connects to a
cluster instead, whose nodes need mirage-gym installed (and the generator folder reachable).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from gymnasium import spaces

from mirage_gym.data.rollout import Episode, EpisodeRunner

__all__ = ["RayCollector"]


class _Worker:
    """The actor: one runner, reused for every batch of episodes it is given."""

    def __init__(self, runner_kwargs: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # a worker gets its CPUs, not the whole node's
        self.runner = EpisodeRunner(**runner_kwargs)

    def spaces(self) -> tuple[spaces.Space, spaces.Space]:
        return self.runner.observation_space, self.runner.action_space

    def run(self, indices: list[int]) -> Iterator[Episode]:
        yield from self.runner.run(indices)


class RayCollector:
    """``workers`` Ray actors, each an :class:`EpisodeRunner` with ``num_envs`` sub-envs.

    Args:
        workers: actors to start.
        env_id, num_envs, env_kwargs, max_episode_steps, policy, seed: as :class:`EpisodeRunner`.
        cpus_per_worker: Ray CPUs an actor reserves (and its torch threads).
        address: the Ray cluster to join (default ``$RAY_ADDRESS``, else a new local instance).

    With ``env_kwargs["device"]`` a CUDA device, each actor reserves ``GPUs / workers`` of the
    cluster's GPUs (at most one), so several actors share a GPU.
    """

    def __init__(self, workers: int, *, env_id: str, num_envs: int, env_kwargs: dict[str, Any],
                 max_episode_steps: int, policy: str | bytes, seed: int, cpus_per_worker: int = 1,
                 address: str | None = None) -> None:
        try:
            import ray
        except ImportError as err:
            raise ImportError("the Ray backend needs Ray: pip install 'mirage-gym[distributed]'") from err
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if int(cpus_per_worker) < 1:
            raise ValueError(f"cpus_per_worker must be >= 1, got {cpus_per_worker}")
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address)
        try:
            num_gpus = 0.0
            if str(env_kwargs.get("device", "cpu")).startswith("cuda"):
                gpus = ray.cluster_resources().get("GPU", 0.0)
                if gpus <= 0:
                    raise ValueError(f"device={env_kwargs['device']!r} but the Ray cluster has no GPU")
                num_gpus = min(1.0, gpus / int(workers))
            self.num_envs = int(num_envs)
            runner_kwargs = dict(env_id=env_id, num_envs=self.num_envs, env_kwargs=env_kwargs,
                                 max_episode_steps=max_episode_steps, policy=policy, seed=seed)
            actor = ray.remote(num_cpus=int(cpus_per_worker), num_gpus=num_gpus)(_Worker)
            self.actors = [actor.remote(runner_kwargs, int(cpus_per_worker)) for _ in range(int(workers))]
            # Waiting for every actor's spaces surfaces a bad env or policy here, before anything is written.
            all_spaces = ray.get([a.spaces.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise
        self.observation_space, self.action_space = all_spaces[0]

    def run(self, indices: Sequence[int]) -> Iterator[Episode]:
        """Play episodes ``indices`` over the actors, ``num_envs`` at a time each; yield them as they finish."""
        ray = self._ray
        indices = [int(k) for k in indices]
        batches = deque(indices[i:i + self.num_envs] for i in range(0, len(indices), self.num_envs))
        running = []  # (episode stream, its actor)
        for actor in self.actors:
            if batches:
                running.append((actor.run.remote(batches.popleft()), actor))
        while running:
            ready, _ = ray.wait([stream for stream, _ in running], num_returns=1)
            position = next(i for i, (stream, _) in enumerate(running) if stream is ready[0])
            stream, actor = running[position]
            try:
                ref = next(stream)
            except StopIteration:  # the actor finished its batch: give it the next one
                running.pop(position)
                if batches:
                    running.append((actor.run.remote(batches.popleft()), actor))
                continue
            yield ray.get(ref)

    def close(self) -> None:
        """Stop the actors, and the Ray instance if this collector started it."""
        for actor in getattr(self, "actors", []):
            self._ray.kill(actor)
        self.actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
