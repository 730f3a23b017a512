"""Pruning a model at a given ratio, to reproduce PASER's setting (recover a pruned model with selected data).

- magnitude: unstructured; in every linear layer of the decoder (not the embeddings or the LM head) the
  `ratio` fraction of weights with the smallest |w| is set to zero. The shapes stay the same.
- wanda (Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs"): unstructured and activation-aware;
  weight W_ij scores |W_ij| * ||X_j||_2, X_j being input feature j of the layer over the `calibration` rows'
  tokens, and each output row loses its own `ratio` lowest-scoring weights. One-shot: the activations come from
  one forward pass of the unpruned model (Wanda's code prunes block by block, feeding each block the output of
  the blocks already pruned).
- structured: MLP channel pruning of Llama-style blocks (gate_proj, up_proj, down_proj): each intermediate
  channel scores ||gate row|| x ||up row|| x ||down column||; the lowest `ratio` fraction of channels is
  removed from every block, and `intermediate_size` shrinks accordingly, so the folder loads as usual.
"""
from dataclasses import dataclass, field
from typing import Literal

from posttrain import hf
from posttrain.stage import Context, Dataset, Model, Stage, register


@dataclass
class PruneConfig:
    model: Model
    method: Literal["magnitude", "wanda", "structured"] = "magnitude"
    ratio: float = field(default=0.25, metadata={"gt": 0, "lt": 1, "help": "fraction of weights (magnitude, wanda) or MLP channels (structured) removed"})
    calibration: Dataset | None = field(default=None, metadata={
        "help": "wanda: rows whose text (chat template applied) gives the activations; SFT or prompt rows"})
    calibration_rows: int = field(default=32, metadata={"ge": 1, "help": "wanda: the first N calibration rows"})
    max_length: int | None = field(default=None, metadata={"ge": 8, "help": "wanda: tokens per calibration row "
                                                                          "(default: the model's context)"})


@register
class Prune(Stage):
    kind = "prune"
    Config = PruneConfig
    outputs = {"model": Model}
    description = "magnitude, Wanda or structured (MLP channel) pruning"

    def check(self, cfg: PruneConfig) -> list[tuple[str, str]]:
        if cfg.method == "wanda" and cfg.calibration is None:
            return [("calibration", "method wanda scores weights by their inputs' activations: name calibration rows "
                                    "(an SFT or prompt dataset)")]
        if cfg.method != "wanda" and cfg.calibration is not None:
            return [("calibration", f"only method wanda reads calibration rows; method {cfg.method} would ignore them")]
        return []

    def run(self, cfg: PruneConfig, ctx: Context) -> dict:
        import torch

        model, tokenizer = hf.load_for_inference(ctx.path(cfg.model), dtype="float32")
        before = sum(p.numel() for p in model.parameters())
        metrics = {"parameters_before": before}
        with torch.no_grad():
            if cfg.method == "magnitude":
                magnitude_prune(model, cfg.ratio)
            elif cfg.method == "wanda":
                texts = calibration_texts(ctx.path(cfg.calibration), tokenizer, cfg.calibration_rows)
                length = cfg.max_length or model.config.max_position_embeddings
                metrics["calibration_tokens"] = wanda_prune(model, tokenizer, texts, cfg.ratio, length)
            else:
                metrics["intermediate_size"] = structured_prune(model, cfg.ratio)
        hf.save_model(model, tokenizer, ctx.output("model"))
        return {**metrics, "parameters_after": sum(p.numel() for p in model.parameters()),
                "zero_weight_fraction": zero_fraction(model)}


# ---------- the methods (call them under torch.no_grad()) ----------

def _decoder_linears(model) -> list:
    from torch import nn

    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]


def magnitude_prune(model, ratio: float) -> None:
    for layer in _decoder_linears(model):
        w = layer.weight
        k = int(ratio * w.numel())
        if k:
            threshold = w.abs().flatten().kthvalue(k).values
            w[w.abs() <= threshold] = 0.0


def calibration_texts(path: str, tokenizer, n: int) -> list[str]:
    """The first n rows as the model sees them: SFT rows (messages, prompt+completion, alpaca) whole, prompt rows
    up to the assistant's turn, both through the chat template."""
    from itertools import islice

    from posttrain.data import DataError, iter_rows
    from posttrain.formats import to_messages
    from posttrain.stages.distill import to_prompt

    texts = []
    for i, row in enumerate(islice(iter_rows(path), n)):
        where = f"{path}:{i + 1}"
        try:
            chat, prompt_only = to_messages(row, "auto", where), False
        except DataError:
            chat, prompt_only = to_prompt(row, "prompt", where), True
        texts.append(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt_only))
    if not texts:
        raise ValueError(f"calibration: {path} has no rows")
    return texts


def wanda_prune(model, tokenizer, texts: list[str], ratio: float, max_length: int | None = None) -> int:
    """Zero each output row's `ratio` lowest |W_ij| * ||X_j||_2; returns the calibration token count."""
    import torch

    layers = _decoder_linears(model)
    sq_norms = {layer: torch.zeros(layer.in_features, dtype=torch.float64) for layer in layers}

    def record(layer, inputs, _output):
        x = inputs[0].detach().reshape(-1, layer.in_features).double()
        sq_norms[layer] += (x * x).sum(0)

    hooks = [layer.register_forward_hook(record) for layer in layers]
    tokens = 0
    try:
        for text in texts:  # one row at a time: no padding tokens in the norms
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :max_length]
            model(input_ids=ids)
            tokens += ids.shape[1]
    finally:
        for h in hooks:
            h.remove()
    for layer in layers:
        w = layer.weight
        k = int(ratio * w.shape[1])
        if k:
            score = w.abs() * sq_norms[layer].sqrt().to(w.dtype)[None, :]
            drop = torch.topk(score, k, dim=1, largest=False).indices
            w.scatter_(1, drop, 0.0)
    return tokens


def _mlps(model) -> list:
    from torch import nn

    mlps = [m for m in model.modules() if all(isinstance(getattr(m, n, None), nn.Linear)
                                              for n in ("gate_proj", "up_proj", "down_proj"))]
    if not mlps:
        raise ValueError(f"structured pruning needs Llama-style MLPs (gate_proj/up_proj/down_proj); "
                         f"{type(model).__name__} has none: use method: magnitude")
    return mlps


def _shrink(layer, keep, dim: int):
    from torch import nn

    weight = layer.weight.index_select(dim, keep)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, dtype=weight.dtype, device=weight.device)
    new.weight.copy_(weight)
    if layer.bias is not None:
        new.bias.copy_(layer.bias if dim == 1 else layer.bias.index_select(0, keep))
    return new


def structured_prune(model, ratio: float) -> int:
    """Remove the lowest-scoring MLP channels; returns the new intermediate size."""
    import torch

    mlps = _mlps(model)
    size = mlps[0].up_proj.out_features
    keep_n = max(1, round((1 - ratio) * size))
    for mlp in mlps:
        score = (mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0))
        keep = torch.sort(torch.topk(score, keep_n).indices).values
        mlp.gate_proj, mlp.up_proj = _shrink(mlp.gate_proj, keep, 0), _shrink(mlp.up_proj, keep, 0)
        mlp.down_proj = _shrink(mlp.down_proj, keep, 1)
    model.config.intermediate_size = keep_n
    return keep_n


def zero_fraction(model) -> float:
    linears = _decoder_linears(model)
    return sum(int((m.weight == 0).sum()) for m in linears) / sum(m.weight.numel() for m in linears)
