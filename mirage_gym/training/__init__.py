"""Training of the generator's parts: `mirage-gym train vae|generator --config default`.

Stage 1 (:mod:`.vae_stage`) trains the per-frame autoencoder and the depth head together
on ground-truth renders; stage 2 (:mod:`.generator_stage`) trains the widened Wan
transformer with the flow-matching loss on chunks of ground-truth trajectories, the cache
built from predicted depth as at inference.
"""
