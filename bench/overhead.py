"""posttrain's SFT, DPO and GRPO stages against the same TRL trainer called directly, on the tiny model.

The posttrain side is a whole `run --only STAGE --force` (planning, input hashing, manifests, config dump,
training, model export, artifact hashes). The raw side loads the same upstream model and data, builds the
same TRL trainer with a copy of the exact TRL config posttrain used (captured from its trainer, only
output_dir changed), trains and saves. Each side is run once to warm up, then alternately; the ratio is
median posttrain time / median raw time (target <= 1.05 once warm), at two run lengths, from which the
script also splits posttrain's extra time into a fixed cost per stage and a cost per training step.

    OMP_NUM_THREADS=1 nice -n 10 python bench/overhead.py [--steps 30 300] [--repeats 3]
"""
import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_mini_chain  # noqa: E402

from posttrain import hf  # noqa: E402
from posttrain.data import read_rows  # noqa: E402
from posttrain.recipe import load  # noqa: E402
from posttrain.runner import run  # noqa: E402

STAGES = {"sft": "SFT", "dpo": "DPO", "rlvr": "GRPO"}


def capture_trl_args() -> dict:
    """Record the TRL config of every trainer that trains, keyed by its trainer class."""
    from transformers import Trainer

    seen, train = {}, Trainer.train

    def recording_train(self, *a, **k):
        seen[type(self).__name__] = self.args
        return train(self, *a, **k)

    Trainer.train = recording_train
    return seen


def raw_trainer(stage: str, spec, run_dir: Path, args):
    """The TRL trainer as a user would build it by hand: same model, data, reward and config."""
    from datasets import Dataset
    from trl import DPOTrainer, GRPOTrainer, SFTTrainer

    upstream = run_dir / spec.deps[-1] / "model" if stage != "sft" else run_dir / "base" / "model"
    model, tokenizer = hf.load_model(str(upstream)), hf.load_tokenizer(str(upstream), "model")
    if stage == "sft":
        rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
                for r in read_rows(spec.config.data)]
        return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    if stage == "dpo":
        rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in read_rows(spec.config.data)]
        return DPOTrainer(model=model, ref_model=hf.load_model(str(upstream)), args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    from posttrain.formats import as_chat
    from posttrain.stages.rlvr.stage import reward_functions, routed

    tokenizer.padding_side = "left"
    rows = [routed(r, spec.config, "") for r in read_rows(run_dir / "data" / "rl.jsonl")]
    data = Dataset.from_list([{"prompt": as_chat(r["prompt"]), "row_json": json.dumps(r)} for r in rows])
    funcs, _ = reward_functions(spec.config, hf.end_of_turn_ids(tokenizer))
    return GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=data, processing_class=tokenizer)


def with_output_dir(args, out: Path):
    """A copy of a TRL config writing elsewhere (not dataclasses.replace: __post_init__ derives fields)."""
    args = copy.deepcopy(args)
    args.output_dir = str(out)
    return args


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(root: Path, steps: int, repeats: int, trl_args: dict) -> dict[str, tuple[float, float]]:
    """{stage: (median posttrain s, median raw s)} with every stage set to `steps` training steps."""
    recipe_path = write_mini_chain(root)
    overrides = [f"stages.{s}.train.{k}={v}" for s in STAGES for k, v in
                 (("max_steps", steps), ("save_steps", max(10, steps // 3)), ("logging_steps", 5))]
    recipe = load(recipe_path, overrides)
    run_dir = root / "run"
    run(recipe, run_dir, echo=lambda m: None)  # builds every upstream model once; also the warm-up of the posttrain side
    times = {}
    for stage in STAGES:
        spec = recipe.stages[stage]
        args = trl_args[f"{STAGES[stage]}Trainer"]
        raw_out = root / f"raw-{stage}"

        def raw():
            trainer = raw_trainer(stage, spec, run_dir, with_output_dir(args, raw_out))
            trainer.train()
            trainer.save_model(str(raw_out / "model"))

        def posttrain():
            run(recipe, run_dir, only=stage, force=True, echo=lambda m: None)

        raw()  # warm-up
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(timed(posttrain))
            theirs.append(timed(raw))
        times[stage] = statistics.median(ours), statistics.median(theirs)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs=2, default=[30, 300], help="two run lengths (training steps per stage)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    trl_args = capture_trl_args()
    short, long = a.steps
    results = {steps: measure(Path(tempfile.mkdtemp(prefix=f"bench-overhead-{steps}-")), steps, a.repeats, trl_args)
               for steps in (short, long)}
    print(f"{'stage':6} {'trainer':12} {'steps':>5} {'posttrain s':>12} {'raw TRL s':>10} {'ratio':>6}")
    for stage in STAGES:
        for steps in (short, long):
            o, t = results[steps][stage]
            print(f"{stage:6} {STAGES[stage] + 'Trainer':12} {steps:5d} {o:12.2f} {t:10.2f} {o / t:6.3f}")
    # Extra time = fixed + per_step x steps, from the two lengths: what posttrain costs per stage and per step.
    print("\nposttrain's extra time per stage (fixed) and per training step, from the two run lengths:")
    for stage in STAGES:
        extra = {steps: results[steps][stage][0] - results[steps][stage][1] for steps in (short, long)}
        per_step = (extra[long] - extra[short]) / (long - short)
        fixed = extra[short] - per_step * short
        print(f"{stage:6} fixed {fixed * 1000:7.0f} ms   per step {per_step * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
