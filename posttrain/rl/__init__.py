"""Reinforcement learning from a reward model: the PPO math and rollout helpers."""
