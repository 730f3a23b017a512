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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from posttrain.pruning import magnitude_prune, structured_prune, zero_fraction

        path = ctx.path(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        before = sum(p.numel() for p in model.parameters())
        metrics = {"parameters_before": before}
        if cfg.method == "magnitude":
            magnitude_prune(model, cfg.ratio)
        else:
            metrics["intermediate_size"] = structured_prune(model, cfg.ratio)
        hf.save_model(model, tokenizer, ctx.output("model"))
        return {**metrics, "parameters_after": sum(p.numel() for p in model.parameters()),
                "zero_weight_fraction": zero_fraction(model)}
