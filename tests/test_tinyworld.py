import re

import torch
from transformers import AutoTokenizer

from posttrain.eval.tasks import TaskSpec
from posttrain.formats import locate, row_text
from posttrain.rewards import score_rows
from posttrain.rewards.ifeval_checks import CHECKERS
from posttrain.selection.filters import Contamination
from posttrain.worlds import tinyworld as tw

ANSWER = re.compile(r"The answer is (-?\d+)\.")


def _problem(question: str, ground_truth: str) -> tuple[int, str, int]:
    a, b = map(int, re.findall(r"\d+", question)[:2])
    return (a, "+" if a + b == int(ground_truth) else "-", b)


def test_tokenizer_round_trips_and_marks_assistant_tokens(tmp_path):
    tok = tw.build_tokenizer()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ann has 12 pens."},
            {"role": "assistant", "content": "12+3: 2+3=5. The answer is 15."}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text.endswith("The answer is 15." + tok.eos_token)
    enc = tok.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(marked) == chat[-1]["content"] + tok.eos_token

    prompt = tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and text.startswith(prompt)

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.eos_token, loaded.pad_token) == (tw.EOS, tw.PAD)
    assert loaded.apply_chat_template(chat, tokenize=False) == text


def test_model_is_deterministic_in_seed_and_runs():
    tok = tw.build_tokenizer()
    first, again, other = (tw.build_model(tok, seed=s, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
                           for s in (1, 1, 2))
    ids = torch.tensor([tok("Q: 1+1")["input_ids"]])
    assert torch.equal(first(ids).logits, again(ids).logits)
    assert not torch.equal(first(ids).logits, other(ids).logits)
    assert first(ids).logits.shape[-1] == len(tok)


def _follows(response: str, row: dict) -> bool:
    """A format row's instructions followed, by the IFEval checkers the ifeval verifier runs."""
    return all(CHECKERS[i](response, kw) for i, kw in zip(row["instruction_id_list"], row["kwargs"]))


def _passes(response: str, row: dict) -> bool:
    """A code row's hidden tests pass (our own generated code: run here, without the sandbox, to stay fast)."""
    namespace = {}
    try:
        exec(response.strip("`").removeprefix("python\n"), namespace)
        exec("\n".join(row["test_list"]), namespace)
    except AssertionError:
        return False
    return True


def _right(skill: str, response: str, row: dict) -> bool:
    if skill == "arith":
        return ANSWER.search(response).group(1) == row["ground_truth"]
    return _follows(response, row) if skill == "format" else _passes(response, row)


def test_some_teachers_are_sometimes_wrong():
    rows = tw.sft_candidate_rows(600, seed=0)
    right = {}
    for row in rows:
        assert ANSWER.search(row["prompt"]) is None
        for cand in row["candidates"]:
            right.setdefault(cand["source"], []).append(_right(row["skill"], cand["response"], row))
    rates = {source: sum(hits) / len(hits) for source, hits in right.items()}
    assert {s for s, r in rates.items() if r == 1.0} == {"tutor", "terse", "careful", "oneliner", "fenced"}, rates
    assert 0.5 < rates["hasty"] < 0.95 and 0.3 < rates["guesser"] < 0.7
    assert 0.6 < rates["chatty"] < 0.9 and 0.3 < rates["sloppy"] < 0.7 and 0.3 < rates["swapper"] < 0.7
    assert {r["skill"] for r in rows} == {"arith", "format", "code"}  # courtesy: no SFT teacher shows it


def test_rows_name_their_verifier_and_the_verifiers_agree():
    assert {r["skill"] for r in tw.rl_rows(400, seed=0)} == {"arith", "format", "code"}  # RLVR never sees courtesy
    one = {skill: tw.heldout_rows(1, skill)[0] for skill in tw.SKILLS}
    assert {(s, r["verifier"]) for s, r in one.items()} == {("arith", "numeric"), ("format", "ifeval_words"),
                                                           ("code", "code"), ("courtesy", "ifeval")}
    rows = list(one.values()) * 2
    right = [f"The answer is {one['arith']['ground_truth']}."] + [one[s]["ground_truth"] for s in ("format", "code", "courtesy")]
    wrong = ["The answer is 1000.", "cat", "def f(x): return 0", "OK."]
    verdicts = score_rows(right + wrong, rows)  # each row routed to the verifier it names
    assert [v.score for v in verdicts] == [1.0] * 4 + [0.0] * 4, verdicts


def test_rl_courtesy_share_gives_rlvr_courtesy_prompts_its_verifier_checks():
    rows = tw.rl_rows(400, seed=0, mix=tw.rl_mix(0.25))
    courtesy = [r for r in rows if r["skill"] == "courtesy"]
    assert 60 < len(courtesy) < 140 and {r["skill"] for r in rows} == set(tw.SKILLS)
    assert tw.rl_mix(0.0) == tw.RL_MIX and abs(sum(tw.rl_mix(0.25).values()) - 1) < 1e-9
    held = {r["prompt"][0]["content"] for r in tw.heldout_rows(tw.heldout_size("courtesy"), "courtesy")}
    assert not held & {r["prompt"][0]["content"] for r in courtesy}  # training problems only
    verdicts = score_rows(["Sure. You are welcome.", "OK."], courtesy[:2])
    assert [v.score for v in verdicts] == [1.0, 0.0], verdicts


def test_judged_pairs_prefer_courtesy_on_training_prompts():
    pairs = tw.judged_pairs(200, seed=0)
    held = {r["prompt"][0]["content"] for r in tw.heldout_rows(tw.heldout_size("courtesy"), "courtesy")}
    assert all(p["chosen"][0]["content"] == "You are welcome." != p["rejected"][0]["content"] for p in pairs)
    assert len({p["prompt"][0]["content"] for p in pairs}) > 150 and not held & {p["prompt"][0]["content"] for p in pairs}


def test_generators_are_deterministic():
    for make in (tw.pretrain_rows, tw.sft_candidate_rows, tw.rl_rows, tw.judged_pairs):
        assert make(20, seed=3) == make(20, seed=3)
        assert make(20, seed=3) != make(20, seed=4)
    for skill in tw.SKILLS:
        assert tw.heldout_rows(50, skill) == tw.heldout_rows(50, skill)
        assert tw.heldout_rows(50, skill)[:10] == tw.heldout_rows(10, skill)


def _key(skill: str, question: str, ground_truth: str):
    """What identifies a problem in a question's text (wording aside)."""
    if skill == "arith":
        return _problem(question, ground_truth)
    if skill == "courtesy":
        return tuple(sorted(re.findall(r"\w+", question)[-4:] if question.startswith("Thanks") else
                            re.findall(r"\w+", question)[:1] + re.findall(r"\w+", question)[-2:]))
    return question  # format and code questions are a function of the problem


def _skill_of(question: str) -> str:
    return ("code" if question.startswith("Write ") and "(x)" in question else "format" if question.startswith(("List", "Write"))
            else "courtesy" if "hank" in question else "arith")


def test_training_generators_never_emit_heldout_problems():
    for skill in tw.SKILLS:
        heldout = tw.heldout_rows(tw.heldout_size(skill), skill)
        held = {_key(skill, r["prompt"][0]["content"], r["ground_truth"]) for r in heldout}
        assert len(held) == len(heldout) > 200, skill  # no repeats inside a held-out split
        trained = {_key(skill, r["prompt"], r["ground_truth"]) for r in tw.sft_candidate_rows(3000, seed=0)
                   if r["skill"] == skill}
        trained |= {_key(skill, r["prompt"][0]["content"], r["ground_truth"]) for r in tw.rl_rows(3000, seed=1)
                    if r["skill"] == skill}
        trained |= {_key(skill, r["prompt"][0]["content"], "") for r in tw.judged_pairs(1000, seed=1) if r["skill"] == skill}
        for row in tw.pretrain_rows(3000, seed=2):
            question, answer = row["text"][3:].split("\nA: ", 1)
            if _skill_of(question) == skill:
                gt = re.search(r"(-?\d+)\.$", answer).group(1) if skill == "arith" else ""
                trained.add(_key(skill, question, gt) if skill != "arith" else
                            tuple(int(x) if x.isdigit() else x for x in re.match(r"(\d+)([+-])(\d+)", answer).groups()))
        assert len(trained) > 200 and not trained & held, skill


def test_decontamination_catches_exactly_the_planted_rows():
    """The demo's decontamination (recipes/tiny.yaml: 9-grams against the arithmetic and code eval sets)
    drops the held-out problems the world plants in the SFT candidates, and nothing else."""
    rows = tw.sft_candidate_rows(3000, seed=1, planted=5)
    index = Contamination(9)
    for name in ("tinyworld", "tinyworld_code"):
        index.add_task(TaskSpec(name))
    caught = {r["id"] for r in rows if index.matches(row_text(r, locate("", r)))}
    assert caught == {r["id"] for r in rows if r.get("planted")} == {f"tw-planted-{i}" for i in range(5)}
    eval_questions = {r["prompt"][0]["content"] for r in tw.heldout_rows(5)}
    assert {r["prompt"] for r in rows if r.get("planted")} == eval_questions
