"""RLVR reward terms beyond verifiers: a reward model's score, and gating one term by another.

A `model` term scores prompt + completion with a sequence classifier (num_labels 1, e.g. a reward_model
stage's output) in batches, on this process's accelerator when there is one. The text is the RM's own chat
template over the prompt and the completion, as its training saw the pairs, and the score is its logit.

A gated term counts only where its gate term's reward is above zero: `{name: model, gate: verifier}` is
"verifier, else zero" with the reward model ranking the verified answers. Tülu 3's RLVR reward is the
verifier's alone (verified_reward if verified, else 0); open-instruct's PPO, which Tülu 3 used, adds
`reward_model_multiplier` x RM score to it, the plain weighted mix (`weight` on each term).
"""
import json
from pathlib import Path

from posttrain.data import DataError

MODEL_TERM = "model"


def classifier_problem(path: str) -> str | None:
    """Why a local folder is not a reward model (a sequence classifier with one output); None if it is, or
    if that is not cheap to know here (a hub id, another stage's output not built yet)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None if not Path(path).exists() else f"{path} has no config.json: not a Hugging Face model folder"
    try:
        cfg = json.loads(config.read_text())
    except ValueError as e:
        return f"{config}: not JSON ({e})"
    architectures = cfg.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return (f"{path} is not a sequence classifier (architectures: {', '.join(architectures) or 'none'}); a model "
                "term needs a reward model, e.g. the output of a reward_model stage")
    labels = cfg.get("num_labels", len(cfg.get("id2label") or {0: 0, 1: 1}))
    if labels != 1:
        return f"{path} has {labels} labels; a reward model has exactly one output (num_labels 1)"
    return None


class RewardModelScorer:
    """Scores (prompt, completion) chats with a reward model, loaded on first use and kept."""

    def __init__(self, path: str, batch_size: int):
        self.path, self.batch_size, self.model, self.tokenizer = path, batch_size, None, None

    def _load(self):
        from accelerate import PartialState

        from posttrain import hf

        if problem := classifier_problem(self.path):
            raise DataError(f"reward term `model`: {problem}")
        self.tokenizer = hf.inference_tokenizer(self.path, padding_side="right")
        if not self.tokenizer.chat_template:
            raise DataError(f"reward term `model`: {self.path} has no chat template to format prompt and completion with")
        model = _whole(lambda: hf.load_model(self.path, reward_head=True))
        if model.config.pad_token_id is None:  # the classifier finds each row's last token by the pad id
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(PartialState().device).eval()

    def __call__(self, prompts: list, completions: list) -> list[float]:
        import torch

        if self.model is None:
            self._load()
        chats = [p + c if isinstance(p, list) else [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
                 for p, c in zip(prompts, completions)]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        scores = []
        for start in range(0, len(chats), self.batch_size):
            ids = [self.tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
                   for chat in chats[start:start + self.batch_size]]
            ids = [x[-limit:] if limit else x for x in ids]  # the end, where the score is read, is kept
            batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.model.device)
            with torch.inference_mode():
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


def model_reward(path: str, batch_size: int):
    """A `model` term's reward function, named `model` (TRL logs rewards/model/mean) and loaded on first use."""
    scorer = RewardModelScorer(path, batch_size)

    def model(prompts, completions, **_):
        return scorer(prompts, completions)

    return model


def _whole(load):
    """load() with ZeRO-3's load-time partitioning off: under a ZeRO-3 TRL config from_pretrained would split the
    reward model across ranks, but it only runs forward, here, outside DeepSpeed's engine: each rank holds it whole."""
    from transformers.integrations import deepspeed

    saved = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed.unset_hf_deepspeed_config()
    try:
        return load()
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved


def remembered(fn):
    """`fn` that returns its last result again when called with the same completions object: TRL passes one
    list to every reward function of a batch, so a gate term is computed once however many terms it gates.
    Holding the list keeps the identity check exact."""
    last = {"completions": None, "scores": None}

    def call(prompts=None, completions=None, **kwargs):
        if last["completions"] is not completions:
            last["scores"], last["completions"] = fn(prompts=prompts, completions=completions, **kwargs), completions
        return last["scores"]

    call.__name__ = fn.__name__
    return call


def gated(fn, gate):
    """`fn`'s reward where `gate`'s is above zero, else 0."""
    def call(**kwargs):
        return [r if g > 0 else 0.0 for r, g in zip(fn(**kwargs), gate(**kwargs))]

    call.__name__ = fn.__name__
    return call


def term_problems(terms: list) -> list[tuple[str, str]]:
    """(key, message) for reward terms whose `model` or `gate` do not fit."""
    problems, names = [], [t.name for t in terms]
    for i, term in enumerate(terms):
        if term.name == MODEL_TERM and not term.model:
            problems.append((f"rewards[{i}].model", "a `model` term needs `model`: a reward model folder or "
                                                    "${stages.<reward_model stage>.output.model}"))
        elif term.name != MODEL_TERM and term.model:
            problems.append((f"rewards[{i}].model", f"only a term named `{MODEL_TERM}` reads a model; "
                                                    f"this one is the verifier '{term.name}'"))
        elif term.model and (problem := classifier_problem(term.model)):
            problems.append((f"rewards[{i}].model", problem))
        if term.gate is None:
            continue
        targets = [t for t in terms if t.name == term.gate]
        if term.gate == term.name or len(targets) != 1:
            why = "itself" if term.gate == term.name else "no term" if not targets else "more than one term"
            problems.append((f"rewards[{i}].gate", f"'{term.gate}' names {why}; a gate is another term's name, "
                                                   f"one of: {', '.join(n for n in names if n != term.name)}"))
        elif targets[0].gate is not None:
            problems.append((f"rewards[{i}].gate", f"'{term.gate}' is gated itself; gate by an ungated term"))
    return problems


def reward_model_refs(terms: list, kinds: dict[str, str]) -> list[tuple[str, str]]:
    """(key, message) for each `model` term that names another stage's model when that stage does not train a
    reward model: every other stage kind outputs a causal LM, which is found out only when the term loads it.
    kinds: every stage of the recipe, name -> kind."""
    from posttrain.stage import is_ref, parse_ref

    problems = []
    for i, term in enumerate(terms):
        upstream = parse_ref(term.model)[0] if is_ref(term.model) else None
        if upstream in kinds and kinds[upstream] != "reward_model":
            problems.append((f"rewards[{i}].model", f"stage '{upstream}' ({kinds[upstream]}) outputs a causal LM, "
                             "not a reward model; name a reward_model stage's output"))
    return problems


class VerifiedTerm:
    """One verifier term as a picklable callable (TRL's async worker scores in a spawned process): each
    completion's verdict score x `scale` x `weight`. verifier None routes each row by its own `verifier` field.
    With log_metric (TRL passes it) it logs, per verifier, the share of completions that timed out, crashed
    the verifier or hit a sandbox limit (failures/<verifier>/<kind>), where reward hacking shows first; a
    routed term also logs each verifier's mean reward (verifier_reward/<verifier>), which its own mean mixes."""

    def __init__(self, name: str, verifier: str | None, scale: float, options: dict, timeout_s: float,
                 max_failure_fraction: float, weight: float = 1.0):
        self.__name__, self.verifier, self.scale, self.weight = name, verifier, scale, weight
        self.options, self.timeout_s, self.max_failure_fraction = options, timeout_s, max_failure_fraction

    def __call__(self, prompts, completions, row_json, log_metric=None, **_):
        from posttrain.rewards import failure_shares, score_rows

        rows = [json.loads(r) for r in row_json]
        verdicts = score_rows(completions, rows, self.verifier, timeout_s=self.timeout_s,
                              max_failure_fraction=self.max_failure_fraction, options=self.options)
        scores = [v.score * self.scale * self.weight for v in verdicts]
        if log_metric is not None:
            names = [self.verifier or r["verifier"] for r in rows]
            for key, share in failure_shares(verdicts, names).items():
                log_metric(key, share)
            if self.verifier is None:
                for name in sorted(set(names)):
                    mine = [s for s, n in zip(scores, names) if n == name]
                    log_metric(f"verifier_reward/{name}", sum(mine) / len(mine))
        return scores
