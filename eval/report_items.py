"""Fixed and broken items between consecutive models, the per-example view across stages: for each benchmark
and each pair of consecutive models of an eval stage (base → SFT, SFT → DPO, ...), the held-out items the later
model gets right and the earlier one wrong (fixed) and the reverse (broken), with the question, the gold
answer and both completions, shortened; at most SHOWN of each, then a count of the rest. Right and wrong are
the change table's (eval/skills.py): an item's score reaches 1 or not; it is read from the eval stage's
per-example outputs (samples/<model>/<task>.jsonl), which the report does not copy: the page stays
self-contained and its length bounded."""
import json
from pathlib import Path

from posttrain.data import read_rows
from posttrain.eval.render import Block, Cell, Heading, Para, Table

SHOWN = 3          # fixed items and broken items shown per benchmark and pair of models
TEXT_CHARS = 160   # a question or completion is cut to this many characters
GOLD_CHARS = 60


def items_section(results_inputs: list[tuple[str, Path]]) -> list[Block]:
    """The fixed/broken tables of every results input (an eval stage's results folder) with per-item outputs."""
    tables: list[Block] = []
    for _, folder in results_inputs:
        path = folder / "results.json"
        if path.exists():
            tables += item_changes(json.loads(path.read_text()), folder)
    if not tables:
        return []
    return [Heading("Fixed and broken items"),
            Para(f"Per benchmark, the held-out items that the later of two consecutive models gets right and the "
                 f"earlier one wrong (fixed), and the reverse (broken); at most {SHOWN} of each, questions and "
                 f"completions cut to {TEXT_CHARS} characters. Every item is in the per-example outputs above."),
            *tables]


def item_changes(results: dict, folder: Path) -> list[Table]:
    columns = list(results["models"])
    tasks = list(dict.fromkeys(t for model in results["models"].values() for t in model["tasks"]))
    tables = []
    for task in tasks:
        records = {}
        for c in columns:
            entry = results["models"][c]["tasks"].get(task) or {}
            if entry.get("samples") and (folder / entry["samples"]).exists():
                records[c] = {str(r["id"]): r for r in read_rows(folder / entry["samples"])}
        for before, after in zip(columns, columns[1:]):
            if before in records and after in records:
                tables.append(_pair_table(task, before, after, records[before], records[after]))
    return tables


def _pair_table(task: str, before: str, after: str, old: dict[str, dict], new: dict[str, dict]) -> Table:
    ids = [i for i in old if i in new]
    fixed = [i for i in ids if old[i]["score"] < 1 <= new[i]["score"]]
    broken = [i for i in ids if new[i]["score"] < 1 <= old[i]["score"]]
    rows: list[list[Cell | str]] = []
    for kind, found in (("fixed", fixed), ("broken", broken)):
        for i in found[:SHOWN]:
            rows.append([kind, i, _short(_question(new[i]["prompt"]), TEXT_CHARS),
                         _short(str(new[i].get("ground_truth", "")), GOLD_CHARS),
                         _short(_first(old[i]), TEXT_CHARS), _short(_first(new[i]), TEXT_CHARS)])
        if len(found) > SHOWN:
            rows.append([kind, f"and {len(found) - SHOWN} more", "", "", "", ""])
    if not rows:
        rows.append(["–", "none fixed or broken", "", "", "", ""])
    return Table(["", "item", "question", "gold", f"{before} wrote", f"{after} wrote"], rows,
                 f"{task}, {before} → {after}: {len(fixed)} fixed, {len(broken)} broken of {len(ids)} items "
                 f"both answered", text={2, 3, 4, 5})


def _question(prompt) -> str:
    """The item's own question: a chat prompt's last user turn (few-shot exemplars are earlier turns), a plain
    prompt's last paragraph."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return str(prompt).strip().split("\n\n")[-1]


def _first(record: dict) -> str:
    completions = record.get("completions") or [""]
    return str(completions[0])


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
