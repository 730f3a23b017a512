"""Assistant-only loss for any chat template, and the checks that a template is safe to train with.

TRL trains assistant tokens only through `{% generation %}` markers in the template. A real model's template
rarely has them (SmolLM2, Llama 3.x, Mistral, OLMo 2, Tülu 3, Gemma, Phi): without markers TRL swaps in its own
marked copy for the templates it knows (trl.chat_template_utils.get_training_chat_template) and refuses the rest.
posttrain picks, for SFT: the template's own markers; else TRL's marked copy; else its own marked copy
(`marked_copy`). Whichever it picks must pass `verify` on the probe conversations below (single and multi turn,
with and without a system message): the marked template renders exactly what the original renders, and the
trained tokens of each assistant turn are exactly the text after its generation prompt up to and including the
end-of-turn token. A template none of them passes is a TemplateProblem with the reason, raised at validation
where the tokenizer is at hand (a local model folder) and always before any model loads.

posttrain's marked copy renders the original template inside a macro: the whole conversation once, then, for each
assistant turn, the conversation before it with the generation prompt, which must be exactly what precedes the turn
in the whole conversation (else the model would be trained on a context it never sees when it generates, and the
template is refused). The turn's trained span runs from there to the first end-of-turn token.
"""
from contextlib import contextmanager

PROBE = "posttrain-probe"  # distinct, whitespace-free contents, so each message's text can be found in a rendering


def _msg(role: str, n: int) -> dict:
    return {"role": role, "content": f"{PROBE}-{role}-{n}"}


# The conversation shapes every marked template is checked on. A shape the original template itself refuses
# (Mistral v0.1 raises on a system message) is skipped: rows of that shape fail with the template's own error.
PROBES = {
    "single turn": [_msg("user", 1), _msg("assistant", 1)],
    "multi turn": [_msg("user", 1), _msg("assistant", 1), _msg("user", 2), _msg("assistant", 2)],
    "system message": [_msg("system", 1), _msg("user", 1), _msg("assistant", 1)],
    "system message, multi turn": [_msg("system", 1), _msg("user", 1), _msg("assistant", 1), _msg("user", 2),
                                   _msg("assistant", 2)],
}


class TemplateProblem(ValueError):
    pass


def _render(tokenizer, messages: list[dict], template: str | None = None, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                         chat_template=template)


def _refuses(tokenizer, messages: list[dict], template: str | None) -> bool:
    from jinja2 import TemplateError

    try:
        _render(tokenizer, messages, template)
        return False
    except TemplateError:
        return True


def end_of_turn(tokenizer, template: str | None = None) -> str:
    """The special token the template writes right after an assistant's content (<|im_end|>, <|eot_id|>,
    <end_of_turn>, </s>, ...): the token generation must stop at, so it must be trained. TemplateProblem if
    anything else follows the content."""
    messages = PROBES["single turn"]
    text = _render(tokenizer, messages, template)
    after = text.rfind(messages[-1]["content"])
    if after < 0:
        raise TemplateProblem("the template does not write the assistant's content")
    rest = text[after + len(messages[-1]["content"]):]
    specials = sorted({*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}, key=len, reverse=True)
    token = next((s for s in specials if s and rest.startswith(s)), None)
    if token is None:
        raise TemplateProblem(f"after an assistant's content the template writes {rest[:30]!r}, not a special "
                              "end-of-turn token: the model could not learn where its turn ends")
    return token


def marked_copy(template: str, eot: str) -> str:
    """The template with each assistant turn, from the end of its generation prompt through the first `eot`
    after it, inside {% generation %} markers; it renders exactly what `template` renders (see the module doc).
    A conversation whose turn prompt does not start the whole rendering raises, naming the turn."""
    eot_lit = repr(eot)
    return (
        "{%- macro pt_render(messages, add_generation_prompt) -%}" + template + "{%- endmacro -%}"
        "{%- set pt_full = pt_render(messages, add_generation_prompt) -%}"
        "{%- set pt = namespace(done=0) -%}"
        "{%- for pt_i in range(messages | length) -%}{%- if messages[pt_i]['role'] == 'assistant' -%}"
        "{%- set pt_prompt = pt_render(messages[:pt_i], true) -%}"
        "{%- set pt_start = pt_prompt | length -%}"
        "{%- if pt_full[:pt_start] != pt_prompt -%}{{ raise_exception('posttrain: the chat template renders the "
        "conversation before message ' ~ pt_i ~ ' (an assistant turn) differently as a generation prompt than "
        "inside the whole conversation, so that turn cannot be trained on the context it is generated from') }}"
        "{%- endif -%}"
        "{%- set pt_end = pt_full.find(" + eot_lit + ", pt_start) -%}"
        "{%- if pt_end < 0 -%}{{ raise_exception('posttrain: assistant message ' ~ pt_i ~ ' has no end-of-turn "
        "token ' ~ " + eot_lit + ") }}{%- endif -%}"
        "{%- set pt_end = pt_end + " + str(len(eot)) + " -%}"
        "{{- pt_full[pt.done:pt_start] -}}{%- generation -%}{{- pt_full[pt_start:pt_end] -}}{%- endgeneration -%}"
        "{%- set pt.done = pt_end -%}"
        "{%- endif -%}{%- endfor -%}"
        "{{- pt_full[pt.done:] -}}"
    )


def expected_spans(tokenizer, messages: list[dict], eot: str, template: str | None = None,
                   last_only: bool = False) -> list[str]:
    """What each assistant turn of `messages` (or the last one) should train under the original template: the
    text after its generation prompt through the first end-of-turn token. TemplateProblem when a turn's
    generation prompt is not what precedes the turn in the whole conversation."""
    full = _render(tokenizer, messages, template)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    for i in turns[-1:] if last_only else turns:
        prompt = _render(tokenizer, messages[:i], template, generation_prompt=True)
        if not full.startswith(prompt):
            raise TemplateProblem(f"the conversation before assistant message {i} renders as a generation prompt "
                                  f"as {prompt[-60:]!r} but inside the whole conversation as "
                                  f"{full[:len(prompt)][-60:]!r}: the model would be trained on a context it never "
                                  "sees when it generates")
        end = full.find(eot, len(prompt))
        if end < 0:
            raise TemplateProblem(f"assistant message {i} is not closed by the end-of-turn token {eot!r}")
        spans.append(full[len(prompt):end + len(eot)])
    return spans


def trained_spans(tokenizer, messages: list[dict], template: str) -> list[str]:
    """The text of each run of consecutive tokens the assistant mask trains, as transformers computes the mask
    (and TRL trains it). Read off the rendered text through the tokens' character offsets where the tokenizer
    gives them (decoding a run alone can drop a SentencePiece word's leading space), else decoded."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        chat_template=template)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    runs, start = [], None
    for i, trained in enumerate([*mask, 0]):
        if trained and start is None:
            start = i
        elif not trained and start is not None:
            runs.append((start, i))
            start = None
    text = _render(tokenizer, messages, template)
    if getattr(tokenizer, "is_fast", False):
        plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if plain["input_ids"] == ids:
            offsets = plain["offset_mapping"]
            return [text[offsets[a][0]:offsets[b - 1][1]] for a, b in runs]
    return [tokenizer.decode(ids[a:b]) for a, b in runs]


def verify(tokenizer, marked: str, eot: str) -> str | None:
    """Why `marked` is not a safe training copy of the tokenizer's own template, or None: on every probe the
    original renders, it renders the same text and trains exactly `expected_spans`."""
    from jinja2 import TemplateError

    for name, messages in PROBES.items():
        if _refuses(tokenizer, messages, None):
            continue
        try:
            expected = expected_spans(tokenizer, messages, eot)
            if _render(tokenizer, messages, marked) != _render(tokenizer, messages):
                return f"{name}: the marked template renders the conversation differently from the original"
            trained = trained_spans(tokenizer, messages, marked)
        except (TemplateError, TemplateProblem) as e:
            return f"{name}: {e}"
        if trained != expected:
            return f"{name}: it trains {trained!r}, the assistant turns are {expected!r}"
    return None


def training_template(tokenizer) -> tuple[str, str]:
    """(template, how) that trains exactly the assistant turns of the tokenizer's own template; `how` says
    which: its own markers, TRL's training template or posttrain's marked copy. TemplateProblem with every
    reason when none is safe."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    original = tokenizer.chat_template
    if not isinstance(original, str):
        raise TemplateProblem("the tokenizer has no single chat template to train with")
    eot = end_of_turn(tokenizer)
    if has_generation_markers(original):
        problem = verify(tokenizer, original, eot)
        if problem:
            raise TemplateProblem(f"its own {{% generation %}} markers do not mark exactly the assistant turns: {problem}")
        return original, "the template's own generation markers"
    reasons = []
    try:
        trl_template = get_training_chat_template(tokenizer)
    except Exception:  # noqa: BLE001 - TRL refuses a template it does not know (ValueError) or cannot probe
        trl_template = None
    if trl_template:
        problem = verify(tokenizer, trl_template, eot)
        if not problem:
            return trl_template, "TRL's training template"
        reasons.append(f"TRL's training template for it does not render it exactly ({problem})")
    marked = marked_copy(original, eot)
    problem = verify(tokenizer, marked, eot)
    if not problem:
        return marked, "posttrain's marked copy"
    reasons.append(problem)
    raise TemplateProblem("posttrain cannot mark its assistant turns safely: " + "; ".join(reasons))


def prompt_problem(tokenizer) -> str | None:
    """Why the tokenizer's template cannot split a conversation into prompt and completion as TRL's DPO does
    (the prompt rendered with its generation prompt, then the common prefix with prompt + completion), or None:
    each probe's last assistant turn must follow its generation prompt exactly and end with an end-of-turn
    token."""
    from jinja2 import TemplateError

    try:
        eot = end_of_turn(tokenizer)
        for name, messages in PROBES.items():
            if not _refuses(tokenizer, messages, None):
                try:
                    expected_spans(tokenizer, messages, eot, last_only=True)
                except TemplateProblem as e:
                    return f"{name}: {e}"
    except (TemplateError, TemplateProblem) as e:
        return str(e)
    return None


@contextmanager
def carrying(tokenizer, template: str):
    """The tokenizer carries `template` (its training template) inside the block, as TRL's SFTTrainer
    tokenizes its dataset when it is built, and its own template again after it: the exported tokenizer keeps
    the original."""
    original = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        yield
    finally:
        tokenizer.chat_template = original


def check_model_template(model: str, chat_template: str, assistant_only_loss: bool) -> list[tuple[str, str]]:
    """Validation (sft: assistant_only_loss as set; dpo: False): the problems of the template a stage would train
    with, where its tokenizer is cheap to load (a local model folder, or a GGUF model a run has converted
    already; other models are checked when the stage loads the tokenizer, before the model)."""
    from pathlib import Path

    from posttrain import hf, packaged

    folder = packaged.converted_folder(model) if packaged.is_packaged(model) else Path(model)
    if folder is None or not (folder / "tokenizer_config.json").is_file():
        return []
    try:
        tokenizer = hf.load_tokenizer(str(folder), chat_template)
    except Exception:  # noqa: BLE001 - a tokenizer that does not load is reported when the stage loads it
        return []
    if assistant_only_loss:
        try:
            training_template(tokenizer)
        except TemplateProblem as e:
            return [("chat_template", f"{model}'s chat template: {e}")]
    problem = prompt_problem(tokenizer)
    return [("chat_template", f"{model}'s chat template: {problem}")] if problem else []
