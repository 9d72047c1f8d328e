"""The QA core: reading data, windowing, post-processing, metrics and the files a run writes.

Nothing here imports torch, so the rules that decide a score (which window holds an answer, which
span wins, what counts as a match) can be read, tested and reused without a model.
"""
