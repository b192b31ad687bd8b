"""Training of the generator's parts: ``mirage-gym train all|vae|depth|generator|lora --config NAME``.

Every stage runs the one loop of :mod:`.loop` (:func:`~.loop.fit`: seeded per step, resumable
bit for bit, atomic checkpoints read with ``weights_only=True``) and supplies only its modules,
its batches and its loss. Stage 1 (:mod:`.vae_stage`) trains the per-frame autoencoder with an
auxiliary depth head on ground-truth renders; the depth stage (:mod:`.depth_stage`) trains the
shipped depth head on the frozen latents; stage 2 (:mod:`.generator_stage`) trains the widened
Wan transformer with the flow-matching loss on chunks of ground-truth trajectories, the cache
built from predicted depth as at inference; :mod:`.lora_stage` does the same for a Wan2.2 base
with a LoRA. Configs (architecture and training settings) live in :mod:`mirage_gym.config`.
"""
