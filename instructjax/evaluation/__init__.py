"""Evaluation: measures shared by the stages, the pipeline's final evaluation of every
model, the paper's claims judged on it, and the report."""
