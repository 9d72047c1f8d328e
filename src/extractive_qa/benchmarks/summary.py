"""The ``summary`` line: like-for-like ratios first (same questions, same windows, real tokens per second),
then what the default windows save, labelled as such, then MFU against the peak it names."""

from __future__ import annotations

from omegaconf import DictConfig

from .gemm import peak_for, peak_name


def _ok(out: dict, *keys: str) -> bool:
    return all(isinstance(out.get(k), dict) and "error" not in out[k] for k in keys)


def summarize(cfg: DictConfig, out: dict) -> dict:
    summary: dict = {"bench": "summary", "model": cfg.model.name_or_path, "init": cfg.model.init,
                     "hardware": out["hardware"]["name"], "precision": cfg.precision.mixed_precision}
    if _ok(out, "naive", "seed"):
        naive, ours = out["naive"], out["seed"]
        summary.update({"eval_speedup_like_for_like": ours["tokens_per_s"] / naive["tokens_per_s"],
                        "eval_like_for_like": f"{naive['questions']} questions, seed windows, real tokens/s; naive in "
                                              f"{naive['precision']}, ours in {ours['precision']}"})
    if _ok(out, "train_naive", "train"):
        naive, ours = out["train_naive"], out["train"]
        summary.update({"train_speedup_like_for_like": ours["tokens_per_s"] / naive["tokens_per_s"],
                        "train_like_for_like": f"seed settings, real tokens/s; naive in {naive['precision']}, ours "
                                               f"in {ours['precision']}"})
    from .peer import peer_summary

    summary.update(peer_summary(out))
    if _ok(out, "loop"):
        summary["loop_vs_bare"] = out["loop"]["loop_vs_bare"]
        summary["loop_shapes_per_epoch"] = out["loop"]["distinct_shapes_per_epoch"]
    if _ok(out, "seed", "default"):
        seed, default = out["seed"], out["default"]
        summary.update({"tokens_per_question_seed_windows": seed["real_tokens_per_question"],
                        "tokens_per_question_default_windows": default["real_tokens_per_question"],
                        "default_windows_token_saving": seed["real_tokens_per_question"]
                        / default["real_tokens_per_question"],
                        "oracle_em_default_windows": default.get("oracle_em")})
        if _ok(out, "naive"):  # fewer tokens AND faster code: not a speed-up of the code alone
            summary["questions_per_s_default_windows_vs_naive_not_like_for_like"] = (
                default["questions_per_s"] / out["naive"]["questions_per_s"])
    peaks = out.get("gemm", {})
    precision = cfg.precision.mixed_precision
    peak = peak_for(peaks, precision)
    if peak:
        summary["mfu_peak"] = f"{peak_name(peaks, precision)} GEMM, {peak:.0f} GFLOP/s measured in this run"
        for key, name in (("seed", "eval_mfu"), ("train", "train_mfu")):
            if _ok(out, key) and "model_gflops_per_s" in out[key]:
                summary[name] = out[key]["model_gflops_per_s"] / peak
    if _ok(out, "bf16"):
        summary["bf16_same_prediction"] = out["bf16"].get("same_prediction")
    if _ok(out, "memory"):
        summary["prediction_peak_rss_mb"] = out["memory"].get("peak_rss_mb")
    if _ok(out, "train_memory"):
        summary["train_file_peak_rss_mb"] = out["train_memory"].get("peak_rss_mb")
        summary["train_file_data_growth_x"] = out["train_memory"].get("data_growth_x")
    if _ok(out, "train_memory_later"):
        summary["train_file_data_growth_x_later_runs"] = out["train_memory_later"].get("data_growth_x")
    if _ok(out, "compare"):
        summary["comparison_seconds"] = out["compare"].get("seconds")
    return summary
