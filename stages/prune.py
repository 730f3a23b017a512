"""Pruning a model at a given ratio, to reproduce PASER's setting (recover a pruned model with selected data).

- magnitude: unstructured; in every linear layer of the decoder (not the embeddings or the LM head) the
  `ratio` fraction of weights with the smallest |w| is set to zero. The shapes stay the same.
- structured: MLP channel pruning of Llama-style blocks (gate_proj, up_proj, down_proj): each intermediate
  channel scores ||gate row|| x ||up row|| x ||down column||; the lowest `ratio` fraction of channels is
  removed from every block, and `intermediate_size` shrinks accordingly, so the folder loads as usual.
"""
from dataclasses import dataclass, field
from typing import Literal

from posttrain import hf
from posttrain.stage import Context, Model, Stage, register


@dataclass
class PruneConfig:
    model: Model
    method: Literal["magnitude", "structured"] = "magnitude"
    ratio: float = field(default=0.25, metadata={"gt": 0, "lt": 1, "help": "fraction of weights (magnitude) or MLP channels (structured) removed"})


@register
class Prune(Stage):
    kind = "prune"
    Config = PruneConfig
    outputs = {"model": Model}
    description = "magnitude or structured (MLP channel) pruning"

    def run(self, cfg: PruneConfig, ctx: Context) -> dict:
        import torch

        model, tokenizer = hf.load_for_inference(ctx.path(cfg.model), dtype="float32")
        before = sum(p.numel() for p in model.parameters())
        metrics = {"parameters_before": before}
        with torch.no_grad():
            if cfg.method == "magnitude":
                magnitude_prune(model, cfg.ratio)
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
