"""The built-in tiny world's data: raw pretraining text, SFT candidates from several teachers, RL prompts
with verifiable answers. Held-out problems never appear in any of them (see posttrain.worlds.tinyworld)."""
from dataclasses import dataclass, field

from posttrain.worlds import tinyworld
from posttrain.data import write_rows
from posttrain.stage import Context, Dataset, Stage, register


@dataclass
class TinyWorldConfig:
    pretrain_rows: int = field(default=4000, metadata={"ge": 1})
    sft_rows: int = field(default=2000, metadata={"ge": 1})
    rl_rows: int = field(default=1000, metadata={"ge": 1})
    seed: int = 0


@register
class TinyWorld(Stage):
    kind = "tinyworld"
    Config = TinyWorldConfig
    outputs = {"pretrain": Dataset, "sft_candidates": Dataset, "rl": Dataset}
    description = "synthetic arithmetic data with verifiable answers"

    def run(self, cfg: TinyWorldConfig, ctx: Context) -> dict:
        # Distinct seeds per split so the sets are independent draws from the training pool.
        counts = {
            "pretrain": write_rows(ctx.output("pretrain"), tinyworld.pretrain_rows(cfg.pretrain_rows, cfg.seed)),
            "sft_candidates": write_rows(ctx.output("sft_candidates"), tinyworld.sft_candidate_rows(cfg.sft_rows, cfg.seed + 1)),
            "rl": write_rows(ctx.output("rl"), tinyworld.rl_rows(cfg.rl_rows, cfg.seed + 2)),
        }
        return {f"rows/{k}": v for k, v in counts.items()}
