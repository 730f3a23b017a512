"""A corpus of deliberately broken recipes: each fails `posttrain validate` with exit code 2, every message
names the recipe file and a line, and there is no traceback. Each is one edit of a recipe that validates."""
import re

import pytest

from conftest import write_recipe
from posttrain.cli import main

BASE = """
name: corpus
stages:
  data:
    kind: tinyworld
    sft_rows: 10
  base:
    kind: pretrain
    model: builtin:tiny
    data: ${stages.data.output.pretrain}
    max_length: 128
    train: {max_steps: 2}
  sft:
    kind: sft
    model: ${stages.base.output.model}
    data: SFT
    max_length: 160
    train: {learning_rate: 1e-4}
  dpo:
    kind: dpo
    model: ${stages.sft.output.model}
    data: PREF
    max_length: 192
  ev:
    kind: eval
    models: {sft: '${stages.sft.output.model}'}
    tasks: [{name: tinyworld}]
  report:
    kind: report
    results: ['${stages.ev.output.results}']
"""
DPO_DATA = "    data: PREF\n"
LONG = "x" * 300
# (label, text to replace, replacement)
BROKEN = [
    ("unknown key", "sft_rows: 10", "sft_rowz: 10"),
    ("wrong type", "max_steps: 2", "max_steps: two"),
    ("out of range", "learning_rate: 1e-4", "learning_rate: -1e-4"),
    ("not finite", "learning_rate: 1e-4", "learning_rate: .inf"),
    ("missing stage", "model: ${stages.sft.output.model}\n    data: PREF", "model: ${stages.sfx.output.model}\n    data: PREF"),
    ("missing output in a list", "${stages.ev.output.results}", "${stages.ev.output.resultz}"),
    ("missing stage in a list", "${stages.ev.output.results}", "${stages.evx.output.results}"),
    ("unknown kind", "kind: dpo", "kind: dpoo"),
    ("missing required key", DPO_DATA, ""),
    ("builtin model in sft", "model: ${stages.base.output.model}\n    data: SFT", "model: builtin:tiny\n    data: SFT"),
    ("empty path", "data: SFT", "data: ''"),
    ("missing data file", "data: SFT", "data: /no/such/file.jsonl"),
    ("empty loss_type", DPO_DATA, DPO_DATA + "    loss_type: []\n"),
    ("unknown loss_type", DPO_DATA, DPO_DATA + "    loss_type: [sigmoidd]\n"),
    ("unknown scheduler", "learning_rate: 1e-4}", "learning_rate: 1e-4, lr_scheduler_type: cosinee}"),
    ("unknown optimizer", "learning_rate: 1e-4}", "learning_rate: 1e-4, optim: adamw_tor}"),
    ("trl_args output_dir", "max_steps: 2}", "max_steps: 2, trl_args: {output_dir: elsewhere}}"),
    ("trl_args bf16", "learning_rate: 1e-4}", "learning_rate: 1e-4, trl_args: {bf16: true}}"),
    ("trl_args save_strategy", "learning_rate: 1e-4}", "learning_rate: 1e-4, trl_args: {save_strategy: epoch}}"),
    ("trl_args report_to", "learning_rate: 1e-4}", "learning_rate: 1e-4, trl_args: {report_to: [wandb]}}"),
    ("trl_args unknown", "learning_rate: 1e-4}", "learning_rate: 1e-4, trl_args: {nosuch_arg: 1}}"),
    ("trl_args set by the stage", DPO_DATA, DPO_DATA + "    train: {trl_args: {beta: 0.5}}\n"),
    ("trl_args set by a train key", DPO_DATA, DPO_DATA + "    train: {trl_args: {learning_rate: 0.5}}\n"),
    ("max_length above context", "max_length: 160", "max_length: 100000"),
    ("small context", "max_length: 128", "max_length: 128\n    architecture: {max_position_embeddings: 64}"),
    ("sft rows fit no format", "data: SFT", "data: GSM"),
    ("dpo rows are not pairs", "data: PREF", "data: SFT"),
    ("cycle", "model: ${stages.base.output.model}\n    data: SFT", "model: ${stages.dpo.output.model}\n    data: SFT"),
    ("wrong input type", "data: PREF", "data: ${stages.sft.output.model}"),
    ("unknown top-level key", "name: corpus", "name: corpus\nnmae: x"),
    ("bad name", "name: corpus", "name: 'bad name'"),
    ("over-long name", "name: corpus", f"name: {LONG}"),
    ("bad stage name", "  report:\n", "  'rep ort':\n"),
    ("over-long path component", "data: SFT", f"data: /tmp/{LONG}/x.jsonl"),
    ("duplicate key", "max_length: 160", "max_length: 160\n    max_length: 150"),
    ("bad YAML", "tasks: [{name: tinyworld}]", "tasks: [{name: tinyworld}"),
    ("lora rank 0", DPO_DATA, DPO_DATA + "    lora: {r: 0}\n"),
    ("lora no targets", DPO_DATA, DPO_DATA + "    lora: {target_modules: []}\n"),
    ("exo_pair without smoothing", DPO_DATA, DPO_DATA + "    loss_type: [exo_pair]\n"),
    ("loss_weights mismatch", DPO_DATA, DPO_DATA + "    loss_weights: [1, 2]\n"),
    ("deepspeed without launcher", DPO_DATA, DPO_DATA + "    launcher: {deepspeed: zero3}\n"),
    ("reserved output key", DPO_DATA, DPO_DATA + "    output: x\n"),
    ("broken interpolation", "max_length: 160", "max_length: ${vars.nope}"),
    ("train as a list", "train: {learning_rate: 1e-4}", "train: [1]"),
    ("bad literal", DPO_DATA, DPO_DATA + "    on_bad_rows: sometimes\n"),
    ("bad precision", "learning_rate: 1e-4}", "learning_rate: 1e-4, precision: bf17}"),
    ("warmup out of range", "learning_rate: 1e-4}", "learning_rate: 1e-4, warmup_ratio: 1.5}"),
    ("stage not a mapping", "    results: ['${stages.ev.output.results}']\n",
     "    results: ['${stages.ev.output.results}']\n  extra: 5\n"),
    ("batch size 0", "max_steps: 2}", "max_steps: 2, per_device_train_batch_size: 0}"),
    ("empty results", "results: ['${stages.ev.output.results}']", "results: []"),
    ("empty tasks", "tasks: [{name: tinyworld}]", "tasks: []"),
    ("count and fraction", "data: SFT", "data: [{path: SFT, count: 2, fraction: 0.5}]"),
]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    files = {"SFT": root / "sft.jsonl", "PREF": root / "pref.jsonl", "GSM": root / "gsm.jsonl"}
    files["SFT"].write_text('{"prompt": "1+1?", "completion": "2"}\n' * 3)
    files["PREF"].write_text('{"prompt": "1+1?", "chosen": "2", "rejected": "3"}\n' * 3)
    files["GSM"].write_text('{"question": "1+1?", "answer": "2"}\n' * 3)
    return files


def recipe_text(data_files, text: str) -> str:
    for key in ("SFT", "PREF", "GSM"):
        text = re.sub(rf"\b{key}\b", str(data_files[key]), text)
    return text


def test_the_base_recipe_validates(tmp_path, data_files, capsys):
    assert main(["validate", str(write_recipe(tmp_path, recipe_text(data_files, BASE)))]) == 0, capsys.readouterr().err


def test_corpus_is_large_and_each_edit_applies():
    assert len(BROKEN) >= 40 and len({label for label, _, _ in BROKEN}) == len(BROKEN)
    assert all(old in BASE for _, old, _ in BROKEN)


@pytest.mark.parametrize("label,old,new", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_recipe_fails_validation_with_file_and_line(tmp_path, data_files, capsys, label, old, new):
    path = write_recipe(tmp_path, recipe_text(data_files, BASE.replace(old, new, 1)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    problems = [line[4:] for line in err.splitlines() if line.startswith("  - ")] or [err.removeprefix("error: ")]
    assert problems and all(re.match(rf"{re.escape(str(path))}:\d+: ", p) for p in problems), err
    assert "Traceback" not in err and "x" * 256 not in err, err
