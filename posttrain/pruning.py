"""The pruning methods of the prune stage (see stages/prune.py for what each one does)."""
import torch
from torch import nn


def _decoder_linears(model) -> list[nn.Linear]:
    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]


@torch.no_grad()
def magnitude_prune(model, ratio: float) -> None:
    for layer in _decoder_linears(model):
        w = layer.weight
        k = int(ratio * w.numel())
        if k:
            threshold = w.abs().flatten().kthvalue(k).values
            w[w.abs() <= threshold] = 0.0


def _mlps(model) -> list[nn.Module]:
    mlps = [m for m in model.modules() if all(isinstance(getattr(m, n, None), nn.Linear)
                                              for n in ("gate_proj", "up_proj", "down_proj"))]
    if not mlps:
        raise ValueError(f"structured pruning needs Llama-style MLPs (gate_proj/up_proj/down_proj); "
                         f"{type(model).__name__} has none: use method: magnitude")
    return mlps


def _shrink(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    weight = layer.weight.index_select(dim, keep)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, dtype=weight.dtype)
    new.weight.copy_(weight)
    if layer.bias is not None:
        new.bias.copy_(layer.bias if dim == 1 else layer.bias.index_select(0, keep))
    return new


@torch.no_grad()
def structured_prune(model, ratio: float) -> int:
    """Remove the lowest-scoring MLP channels; returns the new intermediate size."""
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
