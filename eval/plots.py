"""The report's figures as PNG files (matplotlib, Agg backend): training curves per stage from
metrics.jsonl, and the data-selection plots from a select stage's summary output."""
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from posttrain.stages.rlvr.stage import ROUTE_BY_ROW  # noqa: E402

# Panels a training stage may have: (title, y label, matcher over logged keys). A stage gets the
# panels for which it logged something.
PANELS = [
    ("loss", "loss", re.compile(r"^(train/)?loss$")),
    ("DPO reward margin", "chosen - rejected", re.compile(r"^rewards/margins$")),
    ("DPO preference accuracy", "accuracy", re.compile(r"^rewards/accuracies$")),
    # the total and each reward term (TRL: rewards/<term>/mean)
    ("reward", "mean reward", re.compile(r"^reward$|^rewards/[^/]+/mean$")),
    # logged by RLVR's routed term: each verifier's own mean reward, which the term's mean mixes
    ("reward per verifier", "mean reward", re.compile(r"^verifier_reward/[^/]+$")),
    # logged by RLVR (rewards.failure_shares): where reward hacking shows first, so next to the reward
    ("verifier failures", "share timed out, crashed or\nhit a sandbox limit", re.compile(r"^failures/[^/]+$")),
    ("KL to reference", "KL", re.compile(r"^kl$")),
    ("completion length", "tokens", re.compile(r"^completions/mean_length$")),
    # GRPO: a group whose completions all get the same reward has zero advantage, so no gradient
    ("groups with no signal", "share with zero reward std", re.compile(r"^frac_reward_zero_std$")),
    ("clipped tokens", "share of tokens", re.compile(r"^clip_ratio/(low|high|region)_mean$")),
    # DPO with an NLL term (RPO): the chosen log-prob is what the NLL term raises; the gap is the sigmoid term's
    ("log-prob of chosen / rejected", "sequence log-prob", re.compile(r"^logps/(chosen|rejected)$")),
    ("entropy", "nats per token", re.compile(r"^entropy$")),
    ("gradient norm", "norm (before clipping)", re.compile(r"^grad_norm$")),
    ("learning rate", "learning rate", re.compile(r"^learning_rate$")),
]
# Panels of shares: their axis starts at 0 (an all-zero line must not sit on an axis of negative shares).
SHARES = {"verifier failures", "groups with no signal", "clipped tokens"}
# What a panel shows in a stage of a given kind, where the logged key alone does not say it: a distill stage's loss
# is the teacher-student divergence on the student's own samples (stages/distill.py).
PANEL_MEANING = {("distill", "loss"): ("loss: teacher–student divergence", "generalised JSD per token")}
DPI = 110
WIDTH_IN, PANEL_HEIGHT_IN, COLUMNS = 10.8, 2.9, 3  # every curves figure is as wide as the page's text


def failure_totals(rows: list[dict]) -> list[dict]:
    """Each row with failures/<verifier> added: the sum of that verifier's failure kinds (one line per verifier)."""
    out = []
    for r in rows:
        totals: dict[str, float] = {}
        for key, value in r.items():
            m = re.match(r"^failures/([^/]+)/[^/]+$", key)
            if m and isinstance(value, (int, float)):
                totals[f"failures/{m.group(1)}"] = totals.get(f"failures/{m.group(1)}", 0.0) + value
        out.append({**r, **totals})
    return out


def curve_panels(rows: list[dict], kind: str | None = None) -> list[tuple[str, str, list[str]]]:
    """(title, y label, logged keys) of each panel in PANELS that the rows have a number for; `kind`, the stage's
    kind, names what a panel means there (PANEL_MEANING)."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))}, key=lambda k: (k != "reward", k))
    panels = [(*PANEL_MEANING.get((kind, title), (title, ylabel)), [k for k in keys if rx.match(k)])
              for title, ylabel, rx in PANELS]
    return [p for p in panels if p[2]]


def panel_series(rows: list[dict], keys: list[str]) -> list[tuple[str, list[tuple]]]:
    """(legend label, points) per key; a series identical to an earlier one is named in its label ("a = b")
    instead of drawn underneath it, where it would hide."""
    series: list[tuple[str, list[tuple]]] = []
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        same = next((i for i, (_, p) in enumerate(series) if p == points), None)
        if same is None:
            series.append((series_name(key), points))
        else:
            series[same] = (f"{series[same][0]} = {series_name(key)}", points)
    return series


def drawn_series(title: str, rows: list[dict], keys: list[str]) -> list[tuple[str, list[tuple]]]:
    """panel_series, except that a share panel at zero throughout is one line that says so, not "a = b = c"."""
    series = panel_series(rows, keys)
    if title in SHARES and all(y == 0 for _, points in series for _, y in points):
        return [(f"0 at every step ({', '.join(series_name(k) for k in keys)})", series[0][1])]
    return series


def training_curves(stage: str, rows: list[dict], out: Path, kind: str | None = None) -> Path | None:
    """One figure for a stage, the page's width: panels in rows of up to three, a line per matching key."""
    rows = failure_totals([r for r in rows if "step" in r])
    panels = curve_panels(rows, kind)
    if not panels:
        return None
    columns = min(len(panels), COLUMNS)
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(WIDTH_IN, PANEL_HEIGHT_IN * lines + 0.3), squeeze=False)
    for ax, (title, ylabel, keys) in zip(axes.flat, panels):
        series = drawn_series(title, rows, keys)
        if title in SHARES:
            ax.set_ylim(0, max([0.05] + [1.1 * y for _, points in series for _, y in points]))
        for label, points in series:
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(series) > 1 or series[0][0] != keys[0]:  # a legend where the line needs a name
            ax.legend(fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(stage, fontsize=11, x=0.01, ha="left")
    return _save(fig, out)


def series_name(key: str) -> str:
    """The legend label of a logged key: a reward term, a verifier, or the key itself."""
    if key == "reward":
        return "total"
    if m := re.match(r"^rewards/([^/]+)/mean$", key):
        # the routed term is named after the row column it routes by, not after a verifier
        return "each row's verifier" if m.group(1) == ROUTE_BY_ROW else f"term {m.group(1)}"
    if m := re.match(r"^verifier_reward/([^/]+)$|^failures/([^/]+)$", key):
        return next(g for g in m.groups() if g)
    return key


def bar_chart(title: str, labels: list[str], series: dict[str, list[float]], ylabel: str, out: Path) -> Path:
    """Grouped bars, e.g. per cluster: pool size vs kept, or per source: rows kept."""
    fig, ax = plt.subplots(figsize=(min(2.0 + 0.45 * len(labels) * len(series), 10), 3.0))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=45 if max(map(len, labels), default=0) > 6 else 0, ha="right", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
