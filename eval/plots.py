"""The report's figures as PNG files (matplotlib, Agg backend): training curves per stage from
metrics.jsonl, and the data-selection plots from a select stage's summary output."""
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Panels a training stage may have: (title, y label, matcher over logged keys). A stage gets the
# panels for which it logged something.
PANELS = [
    ("loss", "loss", re.compile(r"^(train/)?loss$")),
    ("DPO reward margin", "chosen - rejected", re.compile(r"^rewards/margins$")),
    ("DPO preference accuracy", "accuracy", re.compile(r"^rewards/accuracies$")),
    ("reward per verifier", "mean reward", re.compile(r"^reward$|^rewards/[^/]+/mean$")),
    # logged by RLVR (rewards.failure_shares): where reward hacking shows first, so next to the reward
    ("verifier failures", "share of completions", re.compile(r"^failures/[^/]+/(timeout|crash|sandbox_limit)$")),
    ("KL to reference", "KL", re.compile(r"^kl$")),
    ("completion length", "tokens", re.compile(r"^completions/mean_length$")),
]
DPI = 110


def curve_panels(rows: list[dict]) -> list[tuple[str, str, list[str]]]:
    """(title, y label, logged keys) of each panel in PANELS that the rows have a number for."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    panels = [(title, ylabel, [k for k in keys if rx.match(k)]) for title, ylabel, rx in PANELS]
    return [p for p in panels if p[2]]


def training_curves(stage: str, rows: list[dict], out: Path) -> Path | None:
    """One figure for a stage: a row of panels, each a line per matching logged key against step."""
    rows = [r for r in rows if "step" in r]
    panels = curve_panels(rows)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes[0], panels):
        for key in series:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=_series_name(key))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(stage, fontsize=11, x=0.01, ha="left")
    return _save(fig, out)


def _series_name(key: str) -> str:
    match = re.match(r"^rewards/([^/]+)/mean$|^failures/([^/]+/[^/]+)$", key)
    return next(g for g in match.groups() if g) if match else key


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
