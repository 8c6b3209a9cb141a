"""Pure train steps, (state, batch) -> (state, metrics): SFT, the reward model, PPO."""
