"""Reward modelling (installed as posttrain.reward): rule-based scorers now; the reward_model stage and model scorers build on them."""
