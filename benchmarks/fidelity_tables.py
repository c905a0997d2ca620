"""The fidelity benchmark's result (its JSON dict) as markdown tables."""

from __future__ import annotations

LATENT = ["open_loop_mean", "open_loop_sampled", "teacher_forced", "persistence", "data_mean"]
REWARD = ["window_sum_predicted", "window_sum_actual", "bias", "mae", "window_corr", "step_corr"]


def _fmt(x, spec=".4g") -> str:
    return "–" if x is None else format(x, spec)


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def markdown(result: dict) -> str:
    """The fidelity result as markdown tables (printed by the CLI, embedded by the report)."""
    lat, fr, rw, dn = result["latent"], result["frames"], result["reward"], result["done"]
    ratio, nll = lat["mse_ratio_to_persistence"]["open_loop_mean"], lat["nll"]
    latent = _table(
        ["h", *(f"MSE {c}" for c in LATENT), "open_loop_mean / persistence", "NLL teacher-forced", "NLL open-loop"],
        [[h, *(_fmt(lat["mse"][c][h - 1]) for c in LATENT), _fmt(ratio[h - 1], ".3f"),
          _fmt(nll["teacher_forced"][h - 1], ".1f"), _fmt(nll["open_loop_mean"][h - 1], ".1f")]
         for h in fr["horizons"]],
    )
    frames = [
        f"Decoded frames against the real frame, {metric.upper()} by horizon:\n\n"
        + _table(["", *map(str, fr["horizons"])], [[k, *(_fmt(x, spec) for x in v)] for k, v in fr[metric].items()])
        for metric, spec in (("mse", ".4f"), ("psnr", ".2f"), ("ssim", ".3f"))
    ]
    reward = f"Reward summed over each start's {len(result['horizons'])}-step window, and per step:\n\n" + _table(
        ["", *REWARD], [[k, *(_fmt(v[c], ".3g") for c in REWARD)] for k, v in rw["summary"].items()])
    rate = dn["open_loop_termination_rate"]
    done = (
        f"Done head: {dn['terminal_steps']} terminal of {dn['steps']} steps (teacher-forced), AUC "
        f"{_fmt(dn['auc'], '.3f')}, Brier {_fmt(dn['brier'], '.4f')}; P(done) > 0.5 at "
        f"{dn['terminal_steps_predicted']} of the terminal steps and {dn['false_terminations']} others. {dn['note']}\n"
        f"Open-loop, where no real episode ends: P(done) > 0.5 on {_fmt(rate['mean'], '.3f')} of the mean "
        f"dream's steps, {_fmt(rate['sampled'], '.3f')} of the sampled dreams'.\n\n"
        + _table(["P(done) bin", "steps", "mean predicted", "observed"],
                 [[f"{b['lo']:.1f}–{b['hi']:.1f}", b["count"], _fmt(b["mean_predicted"], ".3f"),
                   _fmt(b["observed"], ".3f")] for b in dn["reliability"]])
    )
    one = lat["one_step_every_step"]
    one_step = (f"Teacher-forced 1-step over all {one['steps']} steps: MSE {_fmt(one['mse'])}, persistence "
                f"{_fmt(one['mse_persistence'])} (ratio {_fmt(one['mse_ratio_to_persistence'], '.3f')}), "
                f"NLL {_fmt(one['nll'], '.2f')} nats.")
    policy = "Teacher-forced, every step, by the policy that drove the rollouts:\n\n" + _table(
        ["policy", "rollouts", "steps", "1-step MSE / persistence", "reward step corr", "terminal steps", "done AUC"],
        [[k, v["rollouts"], v["steps"], _fmt(v["mse_ratio_to_persistence"], ".3f"), _fmt(v["reward_step_corr"], ".3f"),
          v["terminal_steps"], _fmt(v["done_auc"], ".3f")] for k, v in result["by_policy"].items()])
    return "\n\n".join([f"Latent error by horizon (MSE per dim, {result['settings']['starts']} starts):\n\n{latent}",
                        one_step, policy,
                        *frames, reward, done])
