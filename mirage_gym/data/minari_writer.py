"""A Minari dataset written one finished episode at a time, safe to kill at any moment.

The dataset is Minari's ``arrow`` format (``minari.load_dataset`` reads it as it reads its
own), with the Arrow IPC buffers compressed (zstd by default): Minari itself writes them raw,
and raw RGB plus float depth is about 7 bytes a pixel. Arrow keeps one folder per episode,
so an episode can be written aside and moved in with one ``rename``; an HDF5 dataset is one
file that a kill in the middle of a write can leave unreadable.

Layout of ``{root}/{dataset_id}/``::

    data/metadata.json     Minari's metadata; replacing it (atomically) commits episodes
    data/{k}/part-0.arrow  episode k (seed + k), with data/{k}/metadata.json
    previews/episode_{k:06d}.mp4
    .staging/              finished episodes waiting for the ones before them; tmp-* being written
    .lock                  held while a collection writes

Episode ids are the plan's indices, so episode ``k`` always holds seed ``seed + k``; episodes
finishing out of order wait in ``.staging`` until every episode before them is in. A restart
finds the last commit in ``data/metadata.json``: folders moved into ``data/`` after it go back
to ``.staging`` (they are complete), half-written ``tmp-*`` folders are deleted.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
from gymnasium import spaces

from mirage_gym.data.rollout import Episode
from mirage_gym.video import colorize_depth, side_by_side, write_video

__all__ = ["COMPRESSIONS", "CollectionError", "DatasetWriter", "dataset_dir", "default_root"]

COMPRESSIONS = ("zstd", "lz4", "none")
METADATA = "metadata.json"
PART = "part-0.arrow"
_FORMAT_KEY = "mirage_gym"  # our block in Minari's metadata: version, collection config, provenance


class CollectionError(RuntimeError):
    """Writing the dataset failed (disk full, unwritable folder); finished episodes are intact."""


def default_root() -> Path:
    """Minari's datasets folder: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def dataset_dir(dataset_id: str, root: str | os.PathLike | None = None) -> Path:
    """Where dataset ``dataset_id`` lives under ``root`` (default: :func:`default_root`)."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except (TypeError, ValueError):  # minari raises TypeError for an id without its -vN
        raise ValueError(f"dataset id must be namespace/name-vN (e.g. mirage/room-random-v0), got {dataset_id!r}"
                         ) from None
    return Path(root if root is not None else default_root()) / dataset_id


class DatasetWriter:
    """Appends episodes to a Minari arrow dataset; one writer per dataset at a time (a file lock).

    Opening takes the lock and recovers from an interrupted run; nothing is created until
    :meth:`start` (the first run) and nothing is committed out of order.

    Args:
        root: the Minari datasets folder (``--out``).
        dataset_id: Minari id, ``namespace/name-vN``.
        config: what defines the episodes (env, env kwargs, policy, seed...): JSON-serialisable;
            a dataset is only continued with the config it was started with.
        compression: Arrow IPC buffer compression, one of :data:`COMPRESSIONS`.
        previews: write an mp4 (RGB | depth) of every episode, at ``preview_fps``.
    """

    def __init__(self, root: str | os.PathLike, dataset_id: str, config: Mapping[str, Any], *,
                 compression: str = "zstd", previews: bool = True, preview_fps: int = 4) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        try:  # normalised as stored, so that a resumed run compares like with like (tuples become lists)
            self.config = json.loads(json.dumps(dict(config)))
        except TypeError as err:
            raise ValueError(f"the collection config must be JSON-serialisable (lists, not ranges): {err}") from err
        self.dataset_id = dataset_id
        self.path = dataset_dir(dataset_id, root)
        self.root = Path(root)
        self.compression = compression
        self.previews = bool(previews)
        self.preview_fps = int(preview_fps)
        self.metadata: dict[str, Any] | None = None
        self._spaces: tuple[spaces.Space, spaces.Space] | None = None
        self._episode_bytes = 0
        self._lock_file = self._lock()
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ state

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def staging(self) -> Path:
        return self.path / ".staging"

    @property
    def committed(self) -> int:
        """Episodes in the dataset (ids ``0 .. committed - 1``)."""
        return 0 if self.metadata is None else int(self.metadata["total_episodes"])

    @property
    def dataset_bytes(self) -> int:
        """Bytes of the committed episodes' data files."""
        return self._episode_bytes

    def staged(self) -> set[int]:
        """Finished episodes waiting in staging for the ones before them."""
        if not self.staging.is_dir():
            return set()
        return {int(p.name) for p in self.staging.iterdir() if p.name.isdigit()}

    def _lock(self):
        # The topmost folder this writer creates: a dataset never started leaves none of them behind.
        self._created = next((p for p in reversed([self.path, *self.path.parents]) if not p.exists()), None)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / ".lock", "a")
        except OSError as err:
            raise CollectionError(f"cannot write the dataset folder {self.path}: {err.strerror or err}") from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise CollectionError(f"another process is writing {self.path} (it holds {self.path / '.lock'})") from None
        return handle

    def _recover(self) -> None:
        """Read the last commit; move uncommitted episodes back to staging; drop half-written ones."""
        if not (self.data / METADATA).is_file():
            if self.data.exists():
                raise ValueError(f"{self.data} exists without {METADATA}: not a dataset this writer can continue")
            return
        metadata = json.loads((self.data / METADATA).read_text())
        ours = metadata.get(_FORMAT_KEY)
        if ours is None:
            raise ValueError(f"{self.path} is a Minari dataset not written by mirage-gym collect; choose another "
                             "dataset id or --out")
        if ours["config"] != self.config:
            changed = sorted(k for k in set(ours["config"]) | set(self.config)
                             if ours["config"].get(k) != self.config.get(k))
            detail = ", ".join(f"{k}: {ours['config'].get(k)!r} -> {self.config.get(k)!r}" for k in changed)
            raise ValueError(f"dataset {self.dataset_id} was collected with other settings ({detail}); continue it "
                             "with the same settings, or choose another dataset id")
        self.metadata = metadata
        committed = self.committed
        self.staging.mkdir(exist_ok=True)
        for folder in self.data.iterdir():
            if folder.is_dir() and folder.name.isdigit() and int(folder.name) >= committed:
                os.replace(folder, self.staging / folder.name)  # complete, but its commit never happened
        for leftover in self.staging.glob("tmp-*"):
            shutil.rmtree(leftover)
        for leftover in (self.path / "previews").glob(".tmp-*"):
            leftover.unlink()
        self._episode_bytes = sum(f.stat().st_size for f in self.data.glob(f"*/{PART}"))

    # ------------------------------------------------------------------ creation

    def start(self, env_spec: gym.envs.registration.EnvSpec, observation_space: spaces.Space,
              action_space: spaces.Space, *, algorithm_name: str, description: str,
              extra: Mapping[str, Any]) -> None:
        """Create the (empty) dataset, or check that the existing one has these spaces; needed before :meth:`add`."""
        from minari import __version__ as minari_version
        from minari.serialization import serialize_space

        for name, space in (("observation", observation_space), ("action", action_space)):
            _check_space(name, space)
        obs_text, action_text = serialize_space(observation_space), serialize_space(action_space)
        if self.metadata is not None:
            if (self.metadata["observation_space"], self.metadata["action_space"]) != (obs_text, action_text):
                raise ValueError(f"dataset {self.dataset_id} has other observation/action spaces than this env "
                                 "(was the generator changed?); choose another dataset id")
            self._spaces = (observation_space, action_space)
            return
        from mirage_gym import __version__

        metadata = {
            "dataset_id": self.dataset_id,
            "minari_version": minari_version,
            "data_format": "arrow",
            "jpeg_encoding": False,
            "observation_space": obs_text,
            "action_space": action_text,
            "env_spec": env_spec.to_json(),
            "algorithm_name": algorithm_name,
            "description": description,
            "requirements": [f"mirage-gym=={__version__}"],
            "total_episodes": 0,
            "total_steps": 0,
            "dataset_size": 0.0,
            _FORMAT_KEY: {"version": __version__, "config": self.config, **extra},
        }
        self._write_namespaces()
        # data/ appears with its metadata in one rename: Minari never sees a dataset folder without it.
        fresh = self.path / ".data-new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        _write_json(fresh / METADATA, metadata)
        os.replace(fresh, self.data)
        self.staging.mkdir(exist_ok=True)
        self.metadata = metadata
        self._spaces = (observation_space, action_space)

    def _write_namespaces(self) -> None:
        """Minari's namespace markers for ``a/b/name-v0`` (``a`` and ``a/b``), as its own writer leaves them."""
        parts = self.dataset_id.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            marker = self.root.joinpath(*parts[:depth], "namespace_metadata.json")
            if not marker.exists():
                _write_json(marker, {})

    # ------------------------------------------------------------------ episodes

    def add(self, episode: Episode, commit_below: int | None = None) -> int:
        """Stage a finished episode and commit the episodes now in order (ids below ``commit_below``).

        Returns how many episodes were committed.
        """
        if self._spaces is None:
            raise RuntimeError("start() the dataset before adding episodes")
        if episode.index < self.committed or episode.index in self.staged():
            raise ValueError(f"episode {episode.index} is already in dataset {self.dataset_id}")
        self._stage(episode)
        return self.commit_ready(limit=commit_below)

    def _stage(self, episode: Episode) -> None:
        tmp = self.staging / f"tmp-{episode.index}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _write_episode(tmp / PART, episode, self._spaces, self.compression)
            _write_json(tmp / METADATA, {"id": episode.index, "total_steps": episode.steps, "seed": episode.seed})
            if self.previews:
                self._write_preview(episode)
            os.replace(tmp, self.staging / str(episode.index))
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError):
                raise self._write_error(f"episode {episode.index}", err) from err
            raise

    def commit_ready(self, limit: int | None = None) -> int:
        """Move staged episodes ``committed, committed + 1, ...`` (below ``limit``) into the dataset."""
        if self.metadata is None:
            return 0
        staged = self.staged()
        start = k = self.committed
        steps = 0
        try:
            while k in staged and (limit is None or k < limit):
                steps += int(json.loads((self.staging / str(k) / METADATA).read_text())["total_steps"])
                os.replace(self.staging / str(k), self.data / str(k))
                self._episode_bytes += (self.data / str(k) / PART).stat().st_size
                k += 1
            if k == start:
                return 0
            metadata = dict(self.metadata, total_episodes=k, total_steps=int(self.metadata["total_steps"]) + steps,
                            dataset_size=round(self._episode_bytes / 1e6, 1))
            _write_json(self.data / METADATA, metadata)  # the commit
        except OSError as err:
            raise self._write_error(f"the commit of episodes {start}..{k - 1}", err) from err
        self.metadata = metadata
        return k - start

    def _write_preview(self, episode: Episode) -> None:
        rgb, depth = episode.observations["rgb"], episode.observations["depth"]
        # The reset observation repeats the start frame over the chunk: show it once.
        frames = np.concatenate([rgb[0, :1], rgb[1:].reshape(-1, *rgb.shape[2:])])
        depths = np.concatenate([depth[0, :1], depth[1:].reshape(-1, *depth.shape[2:])])
        folder = self.path / "previews"
        folder.mkdir(exist_ok=True)
        name = f"episode_{episode.index:06d}.mp4"
        tmp = folder / f".tmp-{name}"
        try:
            write_video(tmp, side_by_side([frames, colorize_depth(depths)]), fps=self.preview_fps)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_error(self, what: str, err: OSError) -> CollectionError:
        reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
        return CollectionError(f"could not write {what} to {self.path}: {reason}. The {self.committed} episodes "
                               "already in the dataset are intact; fix this and run the same command again to "
                               "continue")

    def finish(self) -> None:
        """Remove the empty staging folder once nothing waits in it."""
        if self.staging.is_dir() and not any(self.staging.iterdir()):
            self.staging.rmdir()

    def close(self) -> None:
        """Release the lock; a dataset that was never created leaves no folder behind."""
        if self._lock_file is None:
            return
        if not self.data.exists():
            (self.path / ".lock").unlink(missing_ok=True)
            chain = [self.path, *self.path.parents]
            created = chain[:chain.index(self._created) + 1] if self._created is not None else []
            for folder in (self.staging, *created):
                try:
                    folder.rmdir()
                except OSError:  # not empty (another dataset, or a file) or not there: leave it
                    pass
        self._lock_file.close()  # releases the lock
        self._lock_file = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def env_spec_for(env_id: str, env_kwargs: Mapping[str, Any], max_episode_steps: int) -> gym.envs.registration.EnvSpec:
    """The registered single-env spec with the collection's keywords (``dataset.recover_environment()`` makes it)."""
    spec = gym.spec(env_id)
    return replace(spec, kwargs={**spec.kwargs, **env_kwargs}, max_episode_steps=int(max_episode_steps))


# ---------------------------------------------------------------------- files


def _write_json(path: Path, value: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a part (and it survives a crash)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _check_space(name: str, space: spaces.Space) -> None:
    if isinstance(space, spaces.Dict):
        for sub in space.spaces.values():
            _check_space(name, sub)
    elif not isinstance(space, (spaces.Box, spaces.Discrete)):
        raise ValueError(f"the {name} space {space} is not supported by the dataset writer (Box, Discrete, Dict)")


def _write_episode(path: Path, episode: Episode, spaces_: tuple[spaces.Space, spaces.Space], compression: str) -> None:
    """One episode as one Arrow record batch in Minari's arrow layout (``T + 1`` rows; step columns padded)."""
    observation_space, action_space = spaces_
    rows = episode.steps + 1
    columns = {
        "observations": _encode(observation_space, episode.observations, rows),
        "actions": _encode(action_space, _pad(episode.actions, rows), rows),
        "rewards": pa.array(_pad(episode.rewards, rows)),
        "terminations": pa.array(_pad(episode.terminations, rows)),
        "truncations": pa.array(_pad(episode.truncations, rows)),
    }
    if episode.infos:
        columns["infos"] = _encode_infos(episode.infos, rows)
    batch = pa.RecordBatch.from_pydict(columns)
    options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
    with open(path, "wb") as handle:
        with pa.ipc.new_file(handle, batch.schema, options=options) as writer:
            writer.write_batch(batch)
        handle.flush()
        os.fsync(handle.fileno())


def _pad(values: np.ndarray, rows: int) -> np.ndarray:
    """Step columns have one row less than the observations; Minari pads them with zeros."""
    values = np.asarray(values)
    return np.concatenate([values, np.zeros((rows - len(values), *values.shape[1:]), values.dtype)])


def _encode(space: spaces.Space, values: Any, rows: int) -> pa.Array:
    if isinstance(space, spaces.Dict):
        return pa.StructArray.from_arrays([_encode(space[key], values[key], rows) for key in space.spaces],
                                          names=list(space.spaces))
    values = np.asarray(values)
    if len(values) != rows:
        raise ValueError(f"expected {rows} rows, got {len(values)}")
    if isinstance(space, spaces.Discrete):
        return pa.array(values.reshape(rows).astype(space.dtype))
    flat = np.ascontiguousarray(values.reshape(rows, -1), dtype=space.dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _encode_infos(infos: Mapping[str, np.ndarray], rows: int) -> pa.StructArray:
    """Per-step infos: scalars as plain columns, arrays as fixed-size lists with their shape (Minari's encoding)."""
    arrays, fields = [], []
    for key, values in infos.items():
        values = np.asarray(values)
        if values.ndim == 1 and values.dtype == object and all(v is None or isinstance(v, str) for v in values):
            # Text that may be missing (info["blocked_by"]: "obstacle", "unseen" or None): always a string
            # column, so an episode that was never blocked (all None) has the type of one that was.
            array = pa.array(values.tolist(), type=pa.string())
            fields.append(pa.field(key, array.type))
        elif values.ndim == 1:
            array = pa.array(values)
            fields.append(pa.field(key, array.type))
        else:
            flat = np.ascontiguousarray(values.reshape(rows, -1))
            array = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
            fields.append(pa.field(key, array.type, metadata={"shape": ",".join(map(str, values.shape[1:]))}))
        arrays.append(array)
    return pa.StructArray.from_arrays(arrays, fields=fields)
