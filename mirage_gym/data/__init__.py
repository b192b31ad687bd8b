"""Datasets of rollouts: the batched env played by a policy into a resumable Minari dataset.

Example::

    from mirage_gym.data import collect

    result = collect("mirage/room-random-v0", episodes=100, num_envs=8, out="datasets",
                     env_kwargs={"generator": "oracle", "resolution": 64})
    print(result.summary())

    import minari  # with MINARI_DATASETS_PATH=datasets
    dataset = minari.load_dataset("mirage/room-random-v0")

``mirage-gym collect`` is the same from the command line; ``backend="ray"`` fans it out over
Ray actors (``pip install 'mirage-gym[distributed]'``). Needs ``pip install 'mirage-gym[data]'``.
"""

from mirage_gym.data.collect import BACKENDS, CollectResult, collect, default_dataset_id
from mirage_gym.data.minari_writer import COMPRESSIONS, CollectionError, DatasetWriter, dataset_dir, default_root
from mirage_gym.data.rollout import Episode, EpisodeRunner, RandomPolicy, SB3Policy, episode_seed

__all__ = [
    "BACKENDS",
    "COMPRESSIONS",
    "CollectResult",
    "CollectionError",
    "DatasetWriter",
    "Episode",
    "EpisodeRunner",
    "RandomPolicy",
    "SB3Policy",
    "collect",
    "dataset_dir",
    "default_dataset_id",
    "default_root",
    "episode_seed",
]
