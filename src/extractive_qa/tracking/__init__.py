"""Where results go: ``metrics.jsonl`` in every run dir, and MLflow runs when configured."""
