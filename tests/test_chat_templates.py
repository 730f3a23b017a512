"""Assistant-only training on real chat templates (posttrain.chat_templates): SmolLM2's own, and the templates of
the families people post-train (tests/fixtures/chat_templates: each family's public template and its special
tokens), each on SmolLM2's real tokenizer with that family's special tokens, BOS and add-BOS behaviour. Tokenizer
only, except the TRL tests, which build SFTTrainer/DPOTrainer on a 2-layer random model to read the tokens TRL
trains."""
import json
from pathlib import Path

import pytest
from conftest import SMOLLM2

from posttrain import chat_templates, hf

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
FAMILIES = sorted(p.stem for p in FIXTURES.glob("*.json"))
REFUSED = {"mistral_v0_3"}  # a system message is dropped from a trained conversation: see test_refused_template
MARKABLE = [f for f in FAMILIES if f not in REFUSED]

# What each family's generation prompt ends with: the assistant header the model continues from.
GENERATION_PROMPT = {
    "smollm2": "<|im_start|>assistant\n", "qwen2_5": "<|im_start|>assistant\n", "qwen3": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3_1": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3_2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "olmo2": "<|user|>\nWhat is 2+2?\n<|assistant|>\n", "tulu3": "<|user|>\nWhat is 2+2?\n<|assistant|>\n",
    "mistral": "[INST] What is 2+2? [/INST]", "gemma2": "<start_of_turn>model\n", "gemma3": "<start_of_turn>model\n",
    "phi3": "<|assistant|>\n", "phi4": "<|im_start|>assistant<|im_sep|>",
}
SYSTEM = {"role": "system", "content": "Answer in one word."}
Q1, A1 = {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four, since 2+2=4."}
Q2, A2 = {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "Six."}
CONVERSATIONS = {"single turn": [Q1, A1], "multi turn": [Q1, A1, Q2, A2], "system message": [SYSTEM, Q1, A1],
                 "system message, multi turn": [SYSTEM, Q1, A1, Q2, A2]}


@pytest.fixture(scope="module")
def smollm2_folder(smollm2_cut):
    """A folder with SmolLM2-135M-Instruct's real tokenizer and template, as converted from its GGUF."""
    return smollm2_cut


@pytest.fixture(scope="module")
def family_tok(smollm2_folder):
    """family -> (tokenizer, spec), each built once per module (tests restore any template they swap in)."""
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = family_tokenizer(smollm2_folder, family)
        return built[family]
    return get


def family_tokenizer(folder: Path, family: str):
    """SmolLM2's tokenizer with the family's special tokens, BOS/EOS and add-BOS behaviour, and its template."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    spec = json.loads((FIXTURES / f"{family}.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": [t for t in spec["added_tokens"] if t not in tok.get_vocab()]})
    tok.bos_token, tok.eos_token = spec["bos_token"], spec["eos_token"]
    if spec["add_bos"]:  # Llama 3, Gemma, Mistral, Phi-3: encoding text adds the BOS
        bos = spec["bos_token"]
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    tok.chat_template = (FIXTURES / f"{family}.jinja").read_text()
    return tok, spec


def _usable(tok, messages) -> bool:
    """Gemma 2 and Mistral v0.1 refuse system messages themselves: those shapes are not theirs to test."""
    from jinja2 import TemplateError

    try:
        tok.apply_chat_template(messages, tokenize=False)
        return True
    except TemplateError:
        return False


def expected_turns(family: str, spec: dict, messages: list[dict]) -> list[str]:
    """Written out, not derived from the code under test: each assistant turn's content and end-of-turn token.
    Qwen3's last turn starts with the empty think block its template writes after the generation prompt."""
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    if family == "qwen3":
        turns[-1] = "<think>\n\n</think>\n\n" + turns[-1]
    return [t + spec["end_of_turn"] for t in turns]


@pytest.mark.parametrize("family", MARKABLE)
def test_trains_exactly_the_assistant_turns(family_tok, family):
    tok, spec = family_tok(family)
    template, _ = chat_templates.training_template(tok)
    for name, messages in CONVERSATIONS.items():
        if not _usable(tok, messages):
            continue
        # Markers stripped, the training template renders what the model's own renders.
        assert tok.apply_chat_template(messages, tokenize=False, chat_template=template) == \
            tok.apply_chat_template(messages, tokenize=False), (family, name)
        assert chat_templates.trained_spans(tok, messages, template) == expected_turns(family, spec, messages), (family, name)


@pytest.mark.parametrize("family", [f for f in MARKABLE if json.loads((FIXTURES / f"{f}.json").read_text())["default_system"]])
def test_default_system_prompt_is_in_the_prompt_never_trained_and_replaced_by_a_system_message(family_tok, family):
    tok, spec = family_tok(family)
    template, _ = chat_templates.training_template(tok)
    plain = tok.apply_chat_template([Q1, A1], tokenize=False)
    with_system = tok.apply_chat_template([SYSTEM, Q1, A1], tokenize=False)
    default = plain[: plain.index(Q1["content"])]  # everything the template writes before the user's text
    assert len(default) > 40 and default not in with_system and SYSTEM["content"] in with_system  # replaced
    assert SYSTEM["content"] not in plain
    enc = tok.apply_chat_template([Q1, A1], tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  chat_template=template)
    prompt_len = len(tok.apply_chat_template([Q1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert not any(enc["assistant_masks"][:prompt_len])  # the default system prompt and the question: never trained
    assert chat_templates.trained_spans(tok, [SYSTEM, Q1, A1], template) == expected_turns(family, spec, [A1])


@pytest.mark.parametrize("family", MARKABLE)
def test_generation_prompt_is_where_the_trained_turn_starts(family_tok, family):
    """RLVR and eval generate from this prompt; DPO's completion starts after it."""
    from posttrain.eval.generation import prompt_texts

    tok, spec = family_tok(family)
    prompt = prompt_texts(tok, [[Q1]], chat=True)[0]
    assert prompt.endswith(GENERATION_PROMPT[family])
    full = tok.apply_chat_template([Q1, A1], tokenize=False)
    assert full.startswith(prompt + expected_turns(family, spec, [A1])[0])


@pytest.mark.parametrize("family", MARKABLE)
def test_generation_stops_at_the_end_of_turn_token(family_tok, family, tmp_path):
    """The exported generation_config stops at the turn's end (Gemma's <end_of_turn> is not its EOS), and so
    do RLVR's EOS penalty and eval's cut (hf.end_of_turn_ids)."""
    from transformers import GenerationConfig

    tok, spec = family_tok(family)
    assert chat_templates.end_of_turn(tok) == spec["end_of_turn"]
    hf.save_model(_tiny_model(len(tok)), tok, tmp_path / "model")
    stop = GenerationConfig.from_pretrained(tmp_path / "model").eos_token_id
    assert tok.convert_tokens_to_ids(spec["end_of_turn"]) in (stop if isinstance(stop, list) else [stop])


@pytest.mark.parametrize("family", MARKABLE)
def test_no_double_bos(family_tok, family):
    """TRL's SFT/DPO/GRPO paths tokenize through apply_chat_template, eval through encode_prompts: a template that
    writes the BOS gets exactly one, whether or not the tokenizer would add one to plain text."""
    from posttrain.eval.generation import encode_prompts

    tok, spec = family_tok(family)
    bos = tok.bos_token_id
    assert (tok("x")["input_ids"][0] == bos) == spec["add_bos"]  # the pairing adds a BOS as the family does
    writes_bos = tok.apply_chat_template([Q1], tokenize=False).startswith(spec["bos_token"] or "\0")
    for ids in (tok.apply_chat_template([Q1, A1], tokenize=True, return_dict=True)["input_ids"],
                encode_prompts(tok, [[Q1]], chat=True)[0]):
        assert ids[:2] != [bos, bos]
        assert (ids[0] == bos) == writes_bos, family


def test_trl_training_template_is_used_where_it_is_exact_and_refused_where_not(family_tok):
    from trl.chat_template_utils import get_training_chat_template

    tok, _ = family_tok("llama3")
    assert chat_templates.training_template(tok)[1] == "TRL's training template"
    # TRL's Qwen2.5 copy also trains the newline of the generation prompt and the one after <|im_end|>
    tok, _ = family_tok("qwen2_5")
    problem = chat_templates.verify(tok, get_training_chat_template(tok), "<|im_end|>")
    assert problem and "'\\nposttrain-probe-assistant-1<|im_end|>\\n'" in problem
    assert chat_templates.training_template(tok)[1] == "posttrain's marked copy"


def test_refused_template_is_a_validation_error_with_the_reason(family_tok, tmp_path, sft_file):
    """Mistral v0.3's template writes the system message only into a final user turn: a trained conversation
    loses it while the generation prompt has it. posttrain refuses to mark it, at validation."""
    from posttrain.stages.sft import SFT, SFTStageConfig

    tok, _ = family_tok("mistral_v0_3")
    with pytest.raises(chat_templates.TemplateProblem, match="system message: the conversation before assistant "
                                                            "message 2 renders as a generation prompt"):
        chat_templates.training_template(tok)
    tok.save_pretrained(tmp_path / "model")
    problems = SFT().check(SFTStageConfig(model=str(tmp_path / "model"), data=str(sft_file)))
    assert [k for k, _ in problems] == ["chat_template"] and "cannot mark" in problems[0][1]
    # Without assistant-only loss it still cannot give DPO/RLVR a prompt that matches the trained conversation
    assert chat_templates.check_model_template(str(tmp_path / "model"), "model", False)
    smol, _ = family_tok("smollm2")
    smol.save_pretrained(tmp_path / "smol")
    assert SFT().check(SFTStageConfig(model=str(tmp_path / "smol"), data=str(sft_file))) == []
    # builtin:smollm2-135m-instruct, converted already: validation reads its tokenizer, here with v0.3's template
    v0_3 = (FIXTURES / "mistral_v0_3.jinja").read_text()
    assert chat_templates.check_model_template(SMOLLM2, "model", True) == []
    problem = chat_templates.check_model_template(SMOLLM2, v0_3, True)
    assert [k for k, _ in problem] == ["chat_template"] and "system message" in problem[0][1]


def _tiny_model(vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256))


def test_trl_sft_trains_exactly_the_assistant_tokens_of_smollm2s_template(family_tok, tmp_path):
    """The real path: TRL's SFTTrainer tokenizes the data with the template posttrain's SFT stage gives it and its
    collator builds the labels it trains. SmolLM2's own template has no markers and TRL does not know it."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, spec = family_tok("smollm2")
    original = tok.chat_template
    rows = [{"messages": CONVERSATIONS["multi turn"]}, {"messages": CONVERSATIONS["system message"]}]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=256, report_to=[],
                     per_device_train_batch_size=2, use_cpu=True, dataset_num_proc=None)
    with pytest.raises(ValueError, match="not training-compatible"):  # TRL alone refuses it
        SFTTrainer(model=_tiny_model(len(tok)), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    template, how = chat_templates.training_template(tok)
    assert how == "posttrain's marked copy"
    with chat_templates.carrying(tok, template):
        trainer = SFTTrainer(model=_tiny_model(len(tok)), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok)
    assert tok.chat_template == original  # the exported tokenizer keeps the model's own template
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row, ids, labels in zip(rows, batch["input_ids"].tolist(), batch["labels"].tolist()):
        assert tok.decode(ids).startswith(tok.apply_chat_template(row["messages"], tokenize=False))
        runs, current = [], []
        for i, label in zip(ids, labels):
            if label != -100:
                current.append(i)
            elif current:
                runs, current = runs + [tok.decode(current)], []
        runs += [tok.decode(current)] if current else []
        assert runs == expected_turns("smollm2", spec, row["messages"])


def test_trl_dpo_splits_prompt_and_completion_where_the_template_does(family_tok, tmp_path):
    """DPO tokenizes with the model's own template: the prompt is the generation prompt (default system prompt
    included), each completion the assistant turn with its end-of-turn token."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok, _ = family_tok("smollm2")
    row = {"prompt": [Q1], "chosen": [A1], "rejected": [{"role": "assistant", "content": "Five."}]}
    args = DPOConfig(output_dir=str(tmp_path), max_length=256, report_to=[], per_device_train_batch_size=1,
                     use_cpu=True, precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=_tiny_model(len(tok)), ref_model=_tiny_model(len(tok)), args=args,
                         train_dataset=Dataset.from_list([row]), processing_class=tok)
    example = trainer.train_dataset[0]
    assert tok.decode(example["prompt_ids"]) == tok.apply_chat_template([Q1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(example["chosen_ids"]).startswith(A1["content"] + "<|im_end|>")
    assert tok.decode(example["rejected_ids"]).startswith("Five.<|im_end|>")


def test_a_row_the_marked_copy_refuses_is_named_before_training(family_tok):
    """SmolLM2's default system prompt is written only before a first message: an assistant turn that opens the
    conversation has no generation prompt that precedes it as trained, so the SFT stage names that row."""
    from posttrain.data import DataError
    from posttrain.stages.sft import _count_truncated

    tok, _ = family_tok("smollm2")
    template, _ = chat_templates.training_template(tok)
    rows = [{"messages": [Q1, A1]}, {"messages": [A2, Q1, A1]}]
    assert _count_truncated(rows[:1], tok, 8) == 1
    with chat_templates.carrying(tok, template), pytest.raises(
            DataError, match=r"example 1 of the mixture \(it starts 'Six.'.*before message 0 \(an assistant turn\)"):
        _count_truncated(rows, tok, 256)


def test_sft_stage_on_smollm2s_tokenizer_trains_and_exports_its_own_template(family_tok, tmp_path):
    """posttrain's SFT stage end to end on a 2-layer model with SmolLM2's real tokenizer and template."""
    from transformers import AutoTokenizer, GenerationConfig

    from posttrain.stage import STAGES, Context
    from posttrain.stages.sft import SFTStageConfig

    tok, _ = family_tok("smollm2")
    hf.save_model(_tiny_model(len(tok)), tok, tmp_path / "base")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS.values()))
    cfg = SFTStageConfig(model=str(tmp_path / "base"), data=str(data), max_length=128)
    cfg.train.max_steps, cfg.train.per_device_train_batch_size = 2, 2
    stage = STAGES["sft"]()
    assert stage.check(cfg) == []
    (tmp_path / "sft").mkdir()
    result = stage.run(cfg, Context("sft", tmp_path / "sft", tmp_path, stage.outputs))
    assert result["assistant_mask"] == "posttrain's marked copy" and result["rows"] == 4
    out = tmp_path / "sft" / "model"
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template  # the model's own, unmarked
    stop = GenerationConfig.from_pretrained(out).eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in (stop if isinstance(stop, list) else [stop])
