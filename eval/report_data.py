"""The report's data section: for each select stage's summary and each generate (pairs) stage upstream,
what went in, what was kept, what was discarded and why (with counts), then PASER's clusters, GRAPE's
sources, dedup and decontamination. Read from the select stage's `summary` output (schema:
stages/select.py) and the generate stage's manifest metrics (stages/generate.py); nothing is recomputed."""
import json
from pathlib import Path

from posttrain.eval import plots
from posttrain.eval.render import Block, Figure, Heading, Para, Table


def data_section(summaries: list[tuple[str, Path]], stages: list, plots_dir: Path, evaluated: list[str] = ()) -> list[Block]:
    """summaries: (stage name, summary.json) of the select stages given; stages: the run's stages; evaluated:
    the labels of the eval tasks the report shows (decontamination names those it did not check)."""
    blocks: list[Block] = []
    for name, path in summaries:
        try:
            summary = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing, though stage '{name}' is complete; rerun it with --force") from None
        blocks += selection_blocks(name, summary, plots_dir, evaluated)
    for stage in stages:
        if stage.manifest.get("kind") == "generate" and stage.complete:
            blocks += pairs_blocks(stage.name, stage.manifest.get("metrics", {}))
    return [Heading("Data")] + (blocks or [Para("No selection summary or pairs stage was given to this report.")])


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def share(part: int, whole: int) -> str:
    return f"{part} ({part / whole:.0%})" if whole else str(part)


# ---------- accounting ----------
def accounting_table(caption: str, unit: str, rows: list[tuple[str, int | str]], discarded: dict[str, int]) -> Table:
    """In, kept, discarded, and the discards by reason (indented under them), in one two-column table."""
    body = [[label, fmt(n)] for label, n in rows]
    body.append([f"{unit} discarded", fmt(sum(discarded.values()))])
    body += [[f"↳ {reason}", fmt(n)] for reason, n in sorted(discarded.items(), key=lambda kv: -kv[1]) if n]
    return Table(["", "count"], body, caption, numeric={1})


def selection_accounting(s: dict) -> Table:
    """Candidate methods (GRAPE and ablations) choose responses, so they are counted in candidates; the
    others keep rows of a pool, counted in rows. Filtered rows are discards with their filter's reason."""
    candidates = s.get("candidates")
    if not candidates and s.get("sources"):  # a summary from before the stage counted discards by reason
        total = sum(v.get("candidates", 0) for v in s["sources"].values())
        candidates = {"total": total, "kept": s.get("kept_rows", 0), "discarded": {"not chosen": total - s.get("kept_rows", 0)}}
    if candidates:
        rows = [("prompts read", s.get("input_rows")), ("candidate responses", candidates["total"]),
                ("responses kept", share(candidates["kept"], candidates["total"]))]
        return accounting_table("Selection accounting (candidate responses)", "responses", rows, candidates["discarded"])
    reasons = {r: n for r, n in (s.get("reasons") or {}).items() if r != "selected"}
    rows = [("rows read", s.get("input_rows")), ("dropped by dedup/decontamination", s.get("filtered_rows")),
            ("pool the method chose from", s.get("pool_rows"))]
    budget = s.get("budget") or {}
    if budget:
        asked = f"{budget['fraction']:.0%} of the pool" if budget.get("fraction") else f"{budget.get('count')} rows"
        rows.append((f"budget ({asked})", budget.get("resolved")))
    rows.append(("rows kept", share(s.get("kept_rows", 0), s.get("input_rows") or 0)))
    return accounting_table("Selection accounting (rows)", "rows", rows, reasons)


SKIPPED = {"all_verified": "all samples verified (nothing to reject)", "none_verified": "no sample verified (nothing to prefer)",
           "tied_partial": "all samples tied at a partial score"}  # stages/generate.py make_pairs


def pairs_blocks(stage: str, m: dict) -> list[Block]:
    """A generate stage: prompts sampled, samples verified, pairs kept, and why the other prompts gave none."""
    prompts, pairs = m.get("prompts"), m.get("pairs")
    if prompts is None or pairs is None:
        return []
    why = {label: m[f"skipped_{key}"] for key, label in SKIPPED.items() if f"skipped_{key}" in m}
    if not why:  # a manifest from before the stage told the reasons apart
        why = {"all samples scored the same": m.get("skipped_all_equal", prompts - pairs)}
    rows = [("prompts sampled", prompts)]
    if m.get("samples") is not None:
        rows.append(("samples verified", m["samples"]))
    rows += [("prompts giving a pair (best vs worst)", share(pairs, prompts))]
    table = accounting_table(f"Pairs accounting (mean sample score {fmt(m.get('mean_sample_score'))})",
                             "prompts", rows, why)
    blocks: list[Block] = [Heading(f"Preference pairs: {stage} (generate)", 3), table]
    extra = m.get("extra_pairs")
    if extra:  # off-policy pairs added as given (the tiny world's judged courtesy pairs): often most of DPO's data
        blocks.append(Para(f"The pairs file holds {pairs + extra} pairs: {pairs} on-policy (above) and {extra} "
                           f"off-policy from `extra_pairs`, added unchanged ({share(extra, pairs + extra)} of DPO's pairs)."))
    return blocks


# ---------- selection details ----------
def selection_blocks(stage: str, s: dict, plots_dir: Path, evaluated: list[str] = ()) -> list[Block]:
    blocks: list[Block] = [Heading(f"Selection: {stage} ({s.get('method', '?')})", 3), selection_accounting(s)]
    if (s.get("paser") or {}).get("clusters"):
        blocks += paser_blocks(stage, s["paser"], plots_dir)
    if s.get("sources"):
        blocks += source_blocks(stage, s["sources"], plots_dir)
    if s.get("skills"):
        blocks.append(skill_mixture(s["skills"]))
    if s.get("verify_failed"):
        blocks.append(Para(f"{s['verify_failed']} kept responses could not be verified (the check failed); "
                           "they count as not verifying."))
    if s.get("dedup"):
        d = s["dedup"]
        blocks.append(Para(f"Deduplication (MinHash, {d.get('shingle')}-gram shingles, {d.get('num_perm')} permutations, "
                           f"Jaccard threshold {d.get('threshold')}): {d.get('dropped')} near-duplicate rows dropped."))
    if s.get("decontamination"):
        blocks.append(decontamination_table(s["decontamination"], evaluated))
    return blocks


def paser_blocks(stage: str, p: dict, plots_dir: Path) -> list[Block]:
    """PASER's clusters: size, capability degradation (mean JSD), the budget it earned and rows selected."""
    clusters = p["clusters"]
    labels = [str(c["cluster"]) for c in clusters]
    png = plots.bar_chart(f"{stage}: PASER budget per cluster", labels,
                          {key: [c.get(key, 0) for c in clusters] for key in ("size", "budget", "selected")},
                          "rows", plots_dir / f"paser_{stage}.png")
    rows = [[str(c["cluster"]), fmt(c.get("size")), fmt(c.get("degradation")), fmt(c.get("budget")),
             fmt(c.get("selected"))] for c in clusters]
    caption = (f"PASER clusters: k={p.get('k')} chosen by {p.get('k_chosen_by', '?')}; "
               f"CCG rejected {p.get('ccg_rejected', 0)}; budget shortfall {p.get('budget_shortfall', 0)}")
    return [Table(["cluster", "size", "degradation (JSD)", "budget", "selected"], rows, caption, numeric={1, 2, 3, 4}),
            Figure(png, f"PASER: cluster sizes, the budget each cluster earned, and rows selected ({stage})")]


def source_blocks(stage: str, sources: dict, plots_dir: Path) -> list[Block]:
    """GRAPE-style selection: per source (teacher), its candidates and how many were chosen."""
    names = list(sources)
    png = plots.bar_chart(f"{stage}: responses chosen per source", names,
                          {key: [sources[n].get(key, 0) for n in names] for key in ("candidates", "kept")},
                          "responses", plots_dir / f"sources_{stage}.png")
    rows = [[n, fmt(sources[n].get("candidates")), fmt(sources[n].get("kept")), _verified(sources[n])] for n in names]
    return [Table(["source", "candidates", "kept", "kept that verify"], rows, "Responses per source; kept that "
                  "verify: kept responses that pass the verifier their row names", numeric={1, 2, 3}),
            Figure(png, f"Source histogram of the chosen responses ({stage})")]


def skill_mixture(skills: dict) -> Table:
    """The kept SFT data per skill: rows, share of the mixture, and how many of them verify."""
    total = sum(v.get("kept", 0) for v in skills.values())
    rows = [[name, share(v.get("kept", 0), total), _verified(v)] for name, v in skills.items()]
    return Table(["skill", "kept rows (share)", "kept that verify"], rows,
                 "The SFT mixture by skill (the rows' `skill` column)", numeric={1, 2})


def _verified(entry: dict) -> str:
    verified, kept = entry.get("verified"), entry.get("kept") or 0
    return "–" if verified is None else share(verified, kept)


def decontamination_table(d: dict, evaluated: list[str] = ()) -> Table:
    """Per eval set: its items (and how many are too short for an n-gram to match), the training rows that
    share an n-gram with it (dropped), with their ids as far as the summary keeps them; and, in the caption,
    the evaluated sets that were not checked at all."""
    per_set = d.get("per_eval_set") or {}
    rows = []
    for name, v in per_set.items():
        examples, matched = list(map(str, v.get("examples", []))), v.get("matched_rows") or 0
        more = f" and {matched - len(examples)} more" if matched > len(examples) else ""
        rows.append([name, fmt(v.get("items")), fmt(v.get("short_items_unchecked")), fmt(v.get("matched_rows")),
                     (", ".join(examples) + more) or "–"])
    caption = (f"Decontamination: {d.get('ngram')}-gram overlap with each eval set; {d.get('dropped', 0)} training rows "
               f"dropped. An eval item shorter than {d.get('ngram')} words cannot be matched (too short to check).")
    checked = set(per_set) | {_eval_source(name) for name in per_set}  # a task is checked through its eval set
    unchecked = list(d.get("unchecked_tasks") or []) + [t for t in evaluated if _eval_source(t) not in checked]
    if unchecked:
        caption += f" Not checked at all: {', '.join(dict.fromkeys(unchecked))}."
    return Table(["eval set", "eval items", "too short to check", "training rows matched", "training rows"], rows,
                 caption, numeric={1, 2, 3})

def _eval_source(name: str) -> str:
    """The eval set a task label reads (gsm8k_8shot and gsm8k_0shot both read gsm8k), else the label itself."""
    from posttrain.eval.tasks import TASKS

    task = TASKS.get(name)
    return task.source if task is not None and task.source else name
