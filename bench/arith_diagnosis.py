"""Why the tiny demo does not learn arithmetic, measured on a finished run of recipes/tiny.yaml.

    OMP_NUM_THREADS=1 python bench/arith_diagnosis.py runs/tiny                  # seconds: data, tokens, samples
    OMP_NUM_THREADS=1 python bench/arith_diagnosis.py runs/tiny --more-steps 400  # + continue the base (minutes)

A worked answer is "89+25: 9+5=14, carry 1; 8+2+1=11. The answer is 114." Its parts: the restated numbers
(copied from the question), the step operands (copied from the restated numbers), the step results (the
single-digit facts: 9+5=14, 8+2+1=11), the carry flag and the final number (copied from the steps). The script
prints, from the run's own files:

1. data: which teachers GRAPE kept for arithmetic and how many verify; the step facts in the SFT data and in the
   base's pretraining text: instances, distinct facts, wrong facts, exposures per fact in the rows trained on;
2. tokens: that each digit is one token, and the longest arithmetic row against each stage's max_length;
3. samples: in the eval's greedy answers, per model, how often each part is right (a step result is judged
   against the operands the model itself wrote, so a copying slip does not count as an arithmetic one);
4. teacher forcing: each model's next-token accuracy on each part of the tutor's worked answer to the 200
   held-out problems (the base in its pretraining format "Q: ...\\nA: ", the others in the chat template);
5. with --more-steps N: the base trained N more steps on its own pretraining rows (constant rate --lr), its
   teacher-forced accuracy on each part every --every steps: whether more exposures teach the facts.
"""
import argparse
import collections
import json
import random
import re
from pathlib import Path

import yaml

from posttrain.worlds import arith, tinyworld

MODELS = ["base", "sft", "dpo", "rlvr"]
# The worked answer of the tutor and hasty teachers (arith._worked), as a model may also write it.
WORKED = re.compile(r"^(?P<a>\d+)(?P<op>[+-])(?P<b>\d+): (?P<x>\d+)([+-])(?P<y>\d+)=(?P<low>-?\d+)"
                    r"(?:, (?:carry|borrow) (?P<flag>\d+))?; (?P<p>\d+)([+-])(?P<q>\d+)([+-])(?P<c>\d+)=(?P<high>-?\d+)"
                    r"\. The answer is (?P<final>-?\d+)\.$")
# Which part of the answer each group is (teacher forcing scores every character of these groups).
PARTS = {"a": "restated numbers", "b": "restated numbers", "x": "step operands", "y": "step operands",
         "p": "step operands", "q": "step operands", "flag": "carry flag", "c": "carry flag",
         "low": "step results", "high": "step results", "final": "final number"}
# A step fact: "9+5=14" or "8+2+1=11" (a one-digit second operand), not the whole problem ("89+25=114").
STEP_FACT = re.compile(r"(\d+[+-]\d(?:[+-]\d)?)=(-?\d+)")


def step_facts(text: str) -> list[tuple[str, int]]:
    """The single-digit step facts written in `text`, as (left side, the result written)."""
    return [(m[1], int(m[2])) for m in STEP_FACT.finditer(text) if m.start() == 0 or not text[m.start() - 1].isdigit()]


def fact_is_right(left: str, result: int) -> bool:
    return sum(int(term) for term in re.findall(r"[+-]?\d+", left)) == result  # "9-4-1": 9, -4, -1


def judge(completion: str, problem: tuple[int, str, int]) -> dict[str, bool | int] | None:
    """Which parts of a greedy answer are right; None if it is not a worked answer."""
    m = WORKED.match(completion.strip())
    if not m:
        return None
    a, op, b = int(m["a"]), m["op"], int(m["b"])
    tutor = WORKED.match(arith.TEACHERS["tutor"]((a, op, b), None))  # the operands its own numbers give
    facts = step_facts(completion)
    return {"restated numbers": (a, op, b) == problem,
            "step operands": all(m[g] == tutor[g] for g in "xypq"),
            "step facts": len(facts), "step facts right": sum(fact_is_right(*f) for f in facts),
            "final number from the steps": int(m["final"]) == int(m["high"]) * 10 + int(m["low"]) % 10,
            "correct": int(m["final"]) == arith.answer(*problem)}


def heldout(n: int) -> list[tuple[tuple, dict]]:
    """The eval's first n held-out arithmetic problems with their rows (the order eval uses)."""
    return list(zip([p for p, _ in tinyworld._heldout("arith")[:n]], tinyworld.heldout_rows(n)))


def data_report(run: Path) -> None:
    sft_rows = [json.loads(line) for line in open(run / "select" / "data.jsonl")]
    arith_rows = [r for r in sft_rows if r["skill"] == "arith"]
    kept = collections.Counter(r["source"] for r in arith_rows)
    verified = collections.Counter(r["source"] for r in arith_rows
                                   if re.search(r"The answer is (-?\d+)\.", r["messages"][-1]["content"])[1] == r["ground_truth"])
    print(f"1. data: SFT arithmetic rows {len(arith_rows)} of {len(sft_rows)}; kept (verified) by teacher: "
          + ", ".join(f"{s} {n} ({verified[s]})" for s, n in kept.most_common())
          + f"; {sum(verified.values()) / len(arith_rows):.1%} verify")
    base_cfg = yaml.safe_load((run / "base" / "config.resolved.yaml").read_text())
    sft_cfg = yaml.safe_load((run / "sft" / "config.resolved.yaml").read_text())
    pretrain = [json.loads(line)["text"] for line in open(run / "data" / "pretrain.jsonl")]
    for name, texts, cfg, n_rows in [
            ("pretraining", pretrain, base_cfg, len(pretrain)),
            ("SFT", [r["messages"][-1]["content"] for r in arith_rows], sft_cfg, len(sft_rows))]:
        seen = cfg["train"]["max_steps"] * cfg["train"]["per_device_train_batch_size"] / n_rows  # epochs
        facts = [f for t in texts for f in step_facts(t)]
        per_fact = sorted(collections.Counter(left for left, _ in facts).values())
        wrong = sum(not fact_is_right(*f) for f in facts)
        print(f"   {name}: {len(facts)} step facts in the file, {len(set(l for l, _ in facts))} distinct, {wrong} wrong; "
              f"{seen:.2f} epochs trained: exposures per fact min {per_fact[0] * seen:.0f}, "
              f"median {per_fact[len(per_fact) // 2] * seen:.0f}, max {per_fact[-1] * seen:.0f}")


def token_report(run: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "sft" / "model")
    digits = [tok(d, add_special_tokens=False)["input_ids"] for d in "0123456789"]
    one_each = all(len(ids) == 1 for ids in digits) and len({ids[0] for ids in digits}) == 10
    longest = {}
    for name, stage, texts in [
            ("pretraining", "base", [json.loads(line)["text"] for line in open(run / "data" / "pretrain.jsonl")]),
            ("SFT", "sft", [tok.apply_chat_template(json.loads(line)["messages"], tokenize=False)
                            for line in open(run / "select" / "data.jsonl")])]:
        max_length = yaml.safe_load((run / stage / "config.resolved.yaml").read_text())["max_length"]
        longest[name] = (max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts), max_length)
    print(f"2. tokens: each digit one token, 10 distinct: {one_each}; '114' is {len(tok('114')['input_ids'])} tokens; "
          + "; ".join(f"longest {n} row {got} tokens, max_length {ml}" for n, (got, ml) in longest.items()))


def sample_report(run: Path) -> None:
    print("3. the eval's greedy answers, worked ones parsed (a step fact is judged on the operands the model wrote):")
    problems = [p for p, _ in heldout(200)]
    for model in MODELS:
        counts, worked, n = collections.Counter(), 0, 0
        for line in open(run / "eval" / "results" / "samples" / model / "tinyworld.jsonl"):
            row = json.loads(line)
            n += 1
            verdict = judge(row["completions"][0], problems[int(row["id"].rsplit("-", 1)[1])])
            if verdict:
                worked += 1
                counts.update({k: int(v) for k, v in verdict.items()})
        print(f"   {model:5} worked {worked}/{n}: restated numbers {counts['restated numbers']}, "
              f"all four step operands {counts['step operands']}, "
              f"step facts right {counts['step facts right']}/{counts['step facts']}, "
              f"final number from the steps {counts['final number from the steps']}, correct {counts['correct']}")


def forced_accuracy(model, tok, pretrain_format: bool, items) -> dict[str, str]:
    """Next-token accuracy on each part of the tutor's answers, the right prefix given (teacher forcing)."""
    import torch

    hits, totals = collections.Counter(), collections.Counter()
    for problem, row in items:
        answer = arith.TEACHERS["tutor"](problem, None)
        prefix = (f"Q: {row['prompt'][0]['content']}\nA: " if pretrain_format
                  else tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True))
        ids = tok(prefix, add_special_tokens=False)["input_ids"]
        start = len(ids)
        ids = ids + tok.convert_tokens_to_ids(list(answer))
        with torch.no_grad():
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        m = WORKED.match(answer)
        for group, part in PARTS.items():
            if m[group] is None:
                continue
            for pos in range(start + m.start(group), start + m.end(group)):
                totals[part] += 1
                hits[part] += predicted[pos - 1] == ids[pos]
    return {part: f"{hits[part] / totals[part]:.2f}" for part in dict.fromkeys(PARTS.values())}


def forced_report(run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print("4. teacher-forced next-token accuracy on the tutor's answers to 200 held-out problems:")
    for model in MODELS:
        tok = AutoTokenizer.from_pretrained(run / model / "model")
        net = AutoModelForCausalLM.from_pretrained(run / model / "model").eval()
        print(f"   {model:5}", forced_accuracy(net, tok, model == "base", heldout(200)))


def more_steps_report(run: Path, steps: int, every: int, lr: float, seed: int = 0) -> None:
    """Train the base further on its own pretraining rows: do more exposures teach the step facts?"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = yaml.safe_load((run / "base" / "config.resolved.yaml").read_text())
    batch, max_length = cfg["train"]["per_device_train_batch_size"], cfg["max_length"]
    tok = AutoTokenizer.from_pretrained(run / "base" / "model")
    net = AutoModelForCausalLM.from_pretrained(run / "base" / "model")
    texts = [json.loads(line)["text"] + tok.eos_token for line in open(run / "data" / "pretrain.jsonl")]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    items = heldout(200)
    print(f"5. the base trained {steps} more steps x {batch} rows at lr {lr} (constant) on its pretraining rows; "
          f"teacher-forced accuracy:")
    print(f"   step {cfg['train']['max_steps']:5} (the run's base)", forced_accuracy(net.eval(), tok, True, items))
    for step in range(1, steps + 1):
        enc = tok(rng.sample(texts, batch), add_special_tokens=False, padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        net.train()
        loss = net(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % every == 0:
            print(f"   step {cfg['train']['max_steps'] + step:5} (loss {loss.item():.3f})",
                  forced_accuracy(net.eval(), tok, True, items), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished run of recipes/tiny.yaml (e.g. runs/tiny)")
    parser.add_argument("--more-steps", type=int, default=0, help="train the base this many more steps (section 5)")
    parser.add_argument("--every", type=int, default=100, help="measure every this many of those steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="their learning rate (constant)")
    args = parser.parse_args()
    data_report(args.run)
    token_report(args.run)
    sample_report(args.run)
    forced_report(args.run)
    if args.more_steps:
        more_steps_report(args.run, args.more_steps, args.every, args.lr)


if __name__ == "__main__":
    main()
