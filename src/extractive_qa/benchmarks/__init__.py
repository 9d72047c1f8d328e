"""The measurements behind ``make bench`` and ``make gpu-check``, one module per job: a library the two entry
points (``bench.py``, ``gpu_check.py``) share.

* :mod:`.common` -- threads, peak RSS, a data slice and its windows, model FLOPs, fresh processes.
* :mod:`.gemm` -- the GEMM peak MFU is measured against (and which peak: fp32, TF32, bf16, fp16).
* :mod:`.evaluation` -- the seed notebook's dev loop and ours, **on the same questions and windows**, then
  what the default windows save.
* :mod:`.training` -- the seed's training step and the recipe's own, at the seed's settings.
* :mod:`.profiling` -- where a training step's and an evaluation batch's time goes.
* :mod:`.quality` -- bf16 against fp32 answers of a trained tiny model.
* :mod:`.memory` -- peak memory of predicting many questions, and of reading a large training file.
* :mod:`.comparison` -- the report's statistics on 100,000 questions.
* :mod:`.summary` -- the ratios, like for like first.
"""
