"""The built-in tiny world: four skills, a character-level tokenizer with a Tülu-style chat template, and
a small Llama model, so that a whole recipe trains on one CPU thread.

Skills (one module each, see posttrain.worlds.skill): arithmetic word problems (`numeric` verifier),
format instructions (`ifeval_words`: the format and the words), one-line Python functions (`code`, sandboxed), and courtesy, which only
preference data teaches. In each, a fixed hash puts about one problem in ten into the held-out split; the
training generators never emit those. Several "teachers" per skill answer in their own style, and some of
them are sometimes wrong, so data selection and RL have something to do.
"""
from __future__ import annotations

import random
import string

from posttrain.worlds import arith, code, courtesy, formats
from posttrain.worlds.skill import Skill

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

HELDOUT_SPLIT_SEED = 12345  # fixes the order (and wording) of heldout_rows
SKILLS: dict[str, Skill] = {"arith": arith.SKILL, "format": formats.SKILL, "code": code.SKILL,
                            "courtesy": courtesy.SKILL}
# What share of each generator's rows each skill gets. Arithmetic needs the most pretraining (its ~440
# single-digit step facts, 9+5=14 or 8+2+1=11, are the hard part: bench/arith_diagnosis.py). Courtesy is in pretraining text and the judged preference
# pairs only: no SFT teacher shows it, so DPO is what teaches it. RL_MIX leaves it out; a recipe can give
# courtesy a share of the RL prompts (`rl_mix`) so that RLVR keeps what DPO taught.
PRETRAIN_MIX = {"arith": 0.55, "format": 0.15, "code": 0.15, "courtesy": 0.15}
SFT_MIX = {"arith": 0.5, "format": 0.25, "code": 0.25}
RL_MIX = {"arith": 0.5, "format": 0.25, "code": 0.25}


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


# ---------- rows ----------

def _training_problems(n: int, seed: int, mix: dict[str, float]) -> list[tuple[str, tuple, random.Random]]:
    """n (skill id, training-split problem, RNG for wording and teacher slips), skills drawn by `mix`."""
    rng = random.Random(seed)
    names, weights = zip(*mix.items())
    out = []
    for _ in range(n):
        sid = rng.choices(names, weights)[0]
        out.append((sid, rng.choice(SKILLS[sid].split[0]), random.Random(rng.getrandbits(64))))
    return out


def _verifiable_row(row_id: str, sid: str, question: str, problem: tuple) -> dict:
    skill = SKILLS[sid]
    return {"id": row_id, "prompt": [{"role": "user", "content": question}], "skill": sid,
            "verifier": skill.verifier, **skill.fields(problem)}


def _heldout(sid: str) -> list[tuple[tuple, str]]:
    """The skill's held-out (problem, question) pairs in their fixed order."""
    pool = list(SKILLS[sid].split[1])
    rng = random.Random(HELDOUT_SPLIT_SEED)
    rng.shuffle(pool)
    return [(p, SKILLS[sid].question(p, rng)) for p in pool]


def _candidates(sid: str, problem: tuple, rng: random.Random) -> list[dict]:
    return [{"source": name, "response": teach(problem, rng)} for name, teach in sorted(SKILLS[sid].teachers.items())]


def pretrain_rows(n: int, seed: int) -> list[dict]:
    """Raw text for base pretraining: a question and one answer as pretraining text shows it, no chat markup."""
    rows = []
    for sid, p, rng in _training_problems(n, seed, PRETRAIN_MIX):
        skill = SKILLS[sid]
        rows.append({"text": f"Q: {skill.question(p, rng)}\nA: {skill.pretrain_answer(p, rng)}"})
    return rows


def sft_candidate_rows(n: int, seed: int, planted: int = 0, mix: dict[str, float] = SFT_MIX) -> list[dict]:
    """Prompts with their verifier (name and fields) and one candidate response per teacher of their skill, for data
    selection. `planted` adds
    that many held-out arithmetic problems, worded as the eval set words them and flagged `planted`: a
    deliberate contamination for decontamination to catch. `mix`: the skills' shares (e.g. {"arith": 1.0})."""
    rows = []
    for i, (sid, p, rng) in enumerate(_training_problems(n, seed, mix)):
        rows.append({"id": f"tw-sft-{seed}-{i}", "skill": sid, "prompt": SKILLS[sid].question(p, rng),
                     "verifier": SKILLS[sid].verifier, **SKILLS[sid].fields(p), "candidates": _candidates(sid, p, rng)})
    rng = random.Random(seed)
    for i, (p, question) in enumerate(_heldout("arith")[:planted]):
        rows.insert(rng.randrange(len(rows) + 1), {
            "id": f"tw-planted-{i}", "skill": "arith", "planted": True, "prompt": question,
            "verifier": SKILLS["arith"].verifier, **SKILLS["arith"].fields(p), "candidates": _candidates("arith", p, rng)})
    return rows


def rl_rows(n: int, seed: int, mix: dict[str, float] = RL_MIX) -> list[dict]:
    """Training-split prompts with what their verifier needs, each naming its verifier (per-row routing)."""
    return [_verifiable_row(f"tw-rl-{seed}-{i}", sid, SKILLS[sid].question(p, rng), p)
            for i, (sid, p, rng) in enumerate(_training_problems(n, seed, mix))]


def rl_mix(courtesy_share: float = 0.0) -> dict[str, float]:
    """RL_MIX with `courtesy_share` of the prompts made courtesy, the others scaled down to make room."""
    if not courtesy_share:
        return RL_MIX
    return {**{sid: w * (1 - courtesy_share) for sid, w in RL_MIX.items()}, "courtesy": courtesy_share}


def judged_pairs(n: int, seed: int) -> list[dict]:
    """Off-policy preference pairs on courtesy prompts, as a judge would label them: the courteous answer
    is chosen over a curt one. The only data that shows courtesy in a chat."""
    rows = []
    for i, (sid, p, rng) in enumerate(_training_problems(n, seed, {"courtesy": 1.0})):
        rows.append({"id": f"tw-judged-{seed}-{i}", "skill": sid,
                     "prompt": [{"role": "user", "content": courtesy.SKILL.question(p, rng)}],
                     "chosen": [{"role": "assistant", "content": courtesy.COURTEOUS}],
                     "rejected": [{"role": "assistant", "content": rng.choice(courtesy.CURT)}]})
    return rows


def heldout_rows(n: int, skill: str = "arith") -> list[dict]:
    """The first n problems of a skill's held-out split (fixed order, no repeats), same format as rl_rows."""
    if skill not in SKILLS:
        raise ValueError(f"heldout_rows: unknown skill {skill!r}; skills: {', '.join(SKILLS)}")
    pool = _heldout(skill)
    if n > len(pool):
        raise ValueError(f"heldout_rows: asked for {n} {skill} problems, the held-out split has {len(pool)}")
    return [_verifiable_row(f"tw-heldout-{skill}-{i}", skill, q, p) for i, (p, q) in enumerate(pool[:n])]


def heldout_size(skill: str) -> int:
    return len(SKILLS[skill].split[1])
