"""The torch side: models, batching, evaluation over windows, checkpoints and run set-up (the
Accelerator, its precision, data + tokenizer loading, the run dir every process agrees on)."""
