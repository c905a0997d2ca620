"""Gymnasium environments over the world-model core: the dream (single and vector) and the latent real env.

`dreamenv.envs.sb3` (the Stable-Baselines3 VecEnv adapter) is imported only on demand: SB3 and torch
are training extras.
"""
