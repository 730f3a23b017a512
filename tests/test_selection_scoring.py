"""Scoring formulas on hand-computed cases: GRAPE's mean log-prob, the response boundary, JSD, resume."""
import math
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from posttrain.worlds import tinyworld
from posttrain.selection import grape
from posttrain.formats import Example
from posttrain.selection.scoring import (Formatter, ScoreLog, jensen_shannon, mean_jsd, mean_log_probs,
                                         score_stream)

BOOST = 3.0  # logit of "a" after any token in the bigram model below


class BoostA(torch.nn.Module):
    """A bigram 'LM' whose next-token logits are BOOST for 'a' and 0 for every other token."""

    def __init__(self, vocab: int, a_id: int):
        super().__init__()
        self.logits = torch.zeros(vocab)
        self.logits[a_id] = BOOST

    def forward(self, input_ids, attention_mask, logits_to_keep):
        out = self.logits.expand(*input_ids.shape, -1)
        return SimpleNamespace(logits=out[:, -logits_to_keep:])


def ask(response: str) -> Example:
    return Example(({"role": "user", "content": "q"},), response)


@pytest.fixture(scope="module")
def tok():
    return tinyworld.build_tokenizer()


def test_grape_keeps_the_higher_mean_not_the_higher_sum(tok):
    vocab = len(tok)
    la = BOOST - math.log(math.exp(BOOST) + vocab - 1)  # log p("a")
    lo = -math.log(math.exp(BOOST) + vocab - 1)         # log p(any other token)
    fmt = Formatter(tok)
    short, long = fmt.encode(ask("ab"), "t"), fmt.encode(ask("aaab"), "t")
    scores = mean_log_probs(BoostA(vocab, tok.convert_tokens_to_ids("a")), [short, long], 2, tok.pad_token_id)
    assert scores == pytest.approx([(la + lo) / 2, (3 * la + lo) / 4], abs=1e-5)
    assert la + lo > 3 * la + lo  # the sum prefers the short response ...
    assert grape.choose("grape", scores, ["s", "l"], 1, None, 0, 0) == [1]  # ... GRAPE the long one
    assert grape.choose("grape_reverse", scores, ["s", "l"], 1, None, 0, 0) == [0]


def test_ties_go_to_the_first_candidate():
    assert grape.choose("grape", [-1.0, -0.5, -0.5 + 1e-9], list("abc"), 2, None, 0, 0) == [1, 2]
    assert grape.choose("grape_reverse", [-2.0, -2.0, -1.0], list("abc"), 1, None, 0, 0) == [0]


def test_plain_template_scores_exactly_the_response_chars(tok):
    enc = Formatter(tok).encode(ask("The answer is 4."), "t")
    assert tok.decode(enc.ids[enc.start: enc.end]) == "The answer is 4."
    assert tok.decode(enc.ids[: enc.start]) == "Question: q \n Answer: "


def test_boundary_token_that_spans_prompt_and_response_counts_as_response():
    """With a tokenizer that glues a leading space to the next word (as BPE vocabularies do), the prompt's
    trailing space and the response's first word form one token: it must be scored as a response token."""
    words = ["Question", ":", " q", " ", "\n", " Answer", " The", " cat", "<unk>"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?\w+| |\n|[^\w\s]"), behavior="isolated")
    bpe_like = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<unk>")
    enc = Formatter(bpe_like).encode(ask("The cat"), "t")
    assert [words[i] for i in enc.ids[enc.start: enc.end]] == [" The", " cat"]
    # tokenizing the prompt alone ends in a lone " " token that the full text does not contain
    prompt_ids = bpe_like("Question: q \n Answer: ")["input_ids"]
    assert words[prompt_ids[-1]] == " " and enc.ids[: len(prompt_ids)] != prompt_ids


def test_chat_format_scores_the_assistant_content(tok):
    enc = Formatter(tok, prompt_format="chat").encode(ask("ok then"), "t")
    assert tok.decode(enc.ids[enc.start: enc.end]) == "ok then"
    assert tok.decode(enc.ids[: enc.start]).endswith("<|assistant|>\n")


def test_ifd_response_alone_in_chat_format_follows_the_assistant_header_so_one_token_answers_score(tok):
    fmt = Formatter(tok, prompt_format="chat")
    alone = fmt.encode_response_only(ask("7"), "t")  # a one-character answer: one token
    assert tok.decode(alone.ids[alone.start: alone.end]) == "7" and alone.end - alone.start == 1
    assert tok.decode(alone.ids[: alone.start]) == "<|assistant|>\n"  # no question, the same header as s(A|Q)
    given = fmt.encode(ask("7"), "t")
    assert given.ids[given.start - len(alone.ids[: alone.start]):] == alone.ids
    plain = Formatter(tok).encode_response_only(ask("7 and 8"), "t")  # plain: the bare response, as Cherry's
    assert tok.decode(plain.ids[plain.start: plain.end]) == " and 8"  # its first token has nothing before it


def test_batched_length_sorted_scores_equal_one_at_a_time(tok):
    model = tinyworld.build_model(tok, seed=1).eval()
    fmt = Formatter(tok)
    encoded = [fmt.encode(ask(r), "t") for r in ["1", "12+5=17. The answer is 17.", "no", "x" * 40, "abc def"]]
    batched = mean_log_probs(model, encoded, 4, tok.pad_token_id)
    single = mean_log_probs(model, encoded, 1, tok.pad_token_id)
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(round(s, 3) for s in single)) == len(single)  # the texts really score differently


def test_jensen_shannon_hand_cases():
    log = torch.log
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])
    expected = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75)
    assert jensen_shannon(log(p), log(q)).item() == pytest.approx(expected, abs=1e-6)
    assert jensen_shannon(log(torch.tensor([[1.0, 0.0]])), log(torch.tensor([[0.0, 1.0]]))).item() == pytest.approx(math.log(2))
    assert jensen_shannon(log(p), log(p)).item() == pytest.approx(0.0, abs=1e-7)


def test_jsd_is_normalised_per_token_and_zero_for_one_model(tok):
    model = tinyworld.build_model(tok, seed=1).eval()
    other = tinyworld.build_model(tok, seed=2).eval()
    fmt = Formatter(tok)
    encoded = [fmt.encode(ask("7"), "t"), fmt.encode(ask("7" * 30), "t")]
    assert mean_jsd(model, model, encoded, 2, tok.pad_token_id) == pytest.approx([0.0, 0.0], abs=1e-6)
    short, long = mean_jsd(model, other, encoded, 2, tok.pad_token_id)
    assert 0 < short < math.log(2) and 0 < long < math.log(2)
    assert long < 30 * short  # a per-token mean, not a sum over 30 tokens


def test_score_stream_resumes_after_a_kill(tmp_path, tok):
    fmt = Formatter(tok)
    items = [(i, f"r{i}", "t", [ask("x" * (i + 1))]) for i in range(5)]
    calls = []

    def score(enc):
        calls.append(len(enc))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while scoring the second chunk
        return [float(len(e.ids)) for e in enc]

    def stream(scorer):
        return list(score_stream(items, lambda exs, w: [fmt.encode(e, w) for e in exs], scorer,
                                 ScoreLog(log_path, False), 2))

    log_path = tmp_path / "scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        stream(score)
    with open(log_path, "a") as f:
        f.write('{"index": 4, "sco')  # a line cut short by the kill
    rescored = []

    def score_again(enc):
        rescored.append(len(enc))
        return [float(len(e.ids)) for e in enc]
    done = stream(score_again)
    assert [r["index"] for r in done] == [0, 1, 2, 3, 4] and sum(rescored) == 3  # only the rows after the first chunk
    assert [r["tokens"][0] for r in done] == [len(fmt.encode(ask("x" * (i + 1)), "t").ids) for i in range(5)]
    assert stream(score_again) == done and sum(rescored) == 3  # the cut line was dropped, not glued to the next row
    assert list(ScoreLog(log_path, fresh=True).rows()) == []
