"""Quality tools: evaluation, index benchmark and metric-learning fine-tuning."""
