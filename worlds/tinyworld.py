"""The built-in tiny world: 2-digit addition/subtraction word problems, a character-level tokenizer
with a Tülu-style chat template, and a small Llama model, so that a whole recipe trains on one CPU thread.

Problems are (a, op, b) with a, b in 10..99 (a >= b for subtraction). A fixed hash of the problem puts
about one in ten into the held-out split; the training generators never emit those. Several "teachers"
answer each problem in their own style, and some of them are sometimes wrong, so data selection and RL
have something to do.
"""
from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable

EOS, PAD, UNK = "<|endoftext|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHARS = string.printable  # letters, digits, punctuation, whitespace

# Tülu format; {% generation %} marks the assistant tokens for TRL's assistant_only_loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

DEFAULT_ARCH = dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=256, max_position_embeddings=256)

HELDOUT_SPLIT_SEED = 12345  # fixes the order of heldout_rows
NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Lea", "Max"]
ITEMS = ["apples", "pens", "cards", "coins", "books", "shells", "stamps", "marbles"]
ADD_TEMPLATES = ["{n} has {a} {i} and gets {b} more. How many now?",
                 "{n} had {a} {i}, then found {b}. How many in all?"]
SUB_TEMPLATES = ["{n} has {a} {i} and gives away {b}. How many left?",
                 "{n} had {a} {i} and lost {b}. How many remain?"]


# ---------- tokenizer and model ----------

def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: one token per printable character plus the special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, UNK, *ROLE_TOKENS]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(CHARS)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                        additional_special_tokens=list(ROLE_TOKENS))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **arch_overrides) -> PreTrainedModel:
    """A randomly initialised small Llama (about 0.34M parameters by default), deterministic in `seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **{**DEFAULT_ARCH, **arch_overrides})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# ---------- problems ----------

def _is_heldout(a: int, op: str, b: int) -> bool:
    digest = hashlib.sha256(f"{a}{op}{b}".encode()).digest()
    return digest[0] % 10 == 0


def _all_problems() -> list[tuple[int, str, int]]:
    adds = [(a, "+", b) for a in range(10, 100) for b in range(10, 100)]
    subs = [(a, "-", b) for a in range(10, 100) for b in range(10, a + 1)]
    return adds + subs


def _answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _question(a: int, op: str, b: int, rng: random.Random) -> str:
    template = rng.choice(ADD_TEMPLATES if op == "+" else SUB_TEMPLATES)
    return template.format(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b)


def _training_problems(n: int, seed: int) -> list[tuple[tuple[int, str, int], random.Random]]:
    """n training-split problems (with repeats), each with its own RNG for wording and teacher slips."""
    pool = [p for p in _all_problems() if not _is_heldout(*p)]
    rng = random.Random(seed)
    return [(rng.choice(pool), random.Random(rng.getrandbits(64))) for _ in range(n)]


# ---------- teachers: solution styles, some unreliable ----------

def _column_steps(a: int, op: str, b: int, slip: bool) -> tuple[str, int]:
    """Digit-by-digit working; with `slip` the teacher forgets the carry/borrow."""
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        low = a0 + b0
        carry = 0 if slip else low // 10
        steps = f"{a0}+{b0}={low}" + (f", carry {carry}" if carry else "") + f"; {a1}+{b1}+{carry}={a1 + b1 + carry}"
        return steps, (a1 + b1 + carry) * 10 + low % 10
    borrow = 0 if slip else int(a0 < b0)
    low = a0 + 10 * int(a0 < b0) - b0
    steps = f"{a0 + 10 * int(a0 < b0)}-{b0}={low}" + (f", borrow {borrow}" if borrow else "") \
        + f"; {a1}-{b1}-{borrow}={a1 - b1 - borrow}"
    return steps, (a1 - b1 - borrow) * 10 + low


def _tutor(a, op, b, rng):  # always right, shows the column working
    steps, result = _column_steps(a, op, b, slip=False)
    return f"{a}{op}{b}: {steps}. The answer is {result}."


def _hasty(a, op, b, rng):  # same working, forgets the carry/borrow half of the time
    steps, result = _column_steps(a, op, b, slip=rng.random() < 0.5)
    return f"{a}{op}{b}: {steps}. The answer is {result}."


def _terse(a, op, b, rng):  # no working, always right
    return f"{a}{op}{b}={_answer(a, op, b)}. The answer is {_answer(a, op, b)}."


def _guesser(a, op, b, rng):  # no working, off by up to 10 half of the time
    result = _answer(a, op, b) + (rng.choice([-10, -1, 1, 10]) if rng.random() < 0.5 else 0)
    return f"{a}{op}{b}={result}. The answer is {result}."


TEACHERS: dict[str, Callable[[int, str, int, random.Random], str]] = {
    "tutor": _tutor, "hasty": _hasty, "terse": _terse, "guesser": _guesser}


# ---------- public row generators ----------

def pretrain_rows(n: int, seed: int) -> list[dict]:
    """Raw text for base pretraining: a question and one teacher's solution, no chat markup."""
    rows = []
    for (a, op, b), rng in _training_problems(n, seed):
        teacher = TEACHERS[rng.choice(sorted(TEACHERS))]
        rows.append({"text": f"Q: {_question(a, op, b, rng)}\nA: {teacher(a, op, b, rng)}"})
    return rows


def sft_candidate_rows(n: int, seed: int) -> list[dict]:
    """Prompts with one candidate response per teacher, for data selection."""
    rows = []
    for i, ((a, op, b), rng) in enumerate(_training_problems(n, seed)):
        rows.append({"id": f"tw-sft-{seed}-{i}", "prompt": _question(a, op, b, rng),
                     "ground_truth": str(_answer(a, op, b)),
                     "candidates": [{"source": name, "response": teach(a, op, b, rng)}
                                    for name, teach in sorted(TEACHERS.items())]})
    return rows


def _verifiable_row(row_id: str, problem: tuple[int, str, int], rng: random.Random) -> dict:
    return {"id": row_id, "prompt": [{"role": "user", "content": _question(*problem, rng)}],
            "ground_truth": str(_answer(*problem)), "verifier": "numeric"}


def rl_rows(n: int, seed: int) -> list[dict]:
    """Training-split prompts with a verifiable answer, for RLVR and on-policy preference pairs."""
    return [_verifiable_row(f"tw-rl-{seed}-{i}", problem, rng)
            for i, (problem, rng) in enumerate(_training_problems(n, seed))]


def heldout_rows(n: int) -> list[dict]:
    """The first n problems of the held-out split (fixed order, no repeats), same format as rl_rows."""
    pool = [p for p in _all_problems() if _is_heldout(*p)]
    if n > len(pool):
        raise ValueError(f"heldout_rows: asked for {n} problems, the held-out split has {len(pool)}")
    rng = random.Random(HELDOUT_SPLIT_SEED)
    rng.shuffle(pool)
    return [_verifiable_row(f"tw-heldout-{i}", problem, rng) for i, problem in enumerate(pool[:n])]
