"""Evaluation (installed as posttrain.eval): the eval stage, lm-eval glue, local task suites, reports."""
