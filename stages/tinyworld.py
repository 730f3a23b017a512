"""The built-in tiny world's data: raw pretraining text, SFT candidates from several teachers, RL prompts
with verifiable answers (each naming its verifier), and judged off-policy preference pairs. Held-out
problems never appear in any of them (see posttrain.worlds.tinyworld), except the `planted` ones: held-out
arithmetic problems put into the SFT candidates on purpose, flagged `planted`, for decontamination to catch."""
from dataclasses import dataclass, field

from posttrain.worlds import tinyworld
from posttrain.data import write_rows
from posttrain.stage import Context, Dataset, Stage, register


@dataclass
class TinyWorldConfig:
    pretrain_rows: int = field(default=4000, metadata={"ge": 1})
    sft_rows: int = field(default=2000, metadata={"ge": 1})
    rl_rows: int = field(default=1000, metadata={"ge": 1})
    judged_pairs: int = field(default=500, metadata={"ge": 1, "help": "off-policy preference pairs (courtesy)"})
    planted: int = field(default=0, metadata={"ge": 0, "help": "held-out eval items planted in the SFT candidates"})
    rl_courtesy: float = field(default=0.0, metadata={
        "ge": 0.0, "le": 1.0, "help": "share of RL prompts that are courtesy (checked by its end-phrase verifier), "
                                      "so that RLVR keeps what DPO taught"})
    seed: int = 0


@register
class TinyWorld(Stage):
    kind = "tinyworld"
    Config = TinyWorldConfig
    outputs = {"pretrain": Dataset, "sft_candidates": Dataset, "rl": Dataset, "judged_pairs": Dataset}
    description = "synthetic multi-skill data with verifiable answers"

    def run(self, cfg: TinyWorldConfig, ctx: Context) -> dict:
        # Distinct seeds per split so the sets are independent draws from the training pool.
        counts = {
            "pretrain": write_rows(ctx.output("pretrain"), tinyworld.pretrain_rows(cfg.pretrain_rows, cfg.seed)),
            "sft_candidates": write_rows(ctx.output("sft_candidates"), tinyworld.sft_candidate_rows(cfg.sft_rows, cfg.seed + 1, cfg.planted)),
            "rl": write_rows(ctx.output("rl"), tinyworld.rl_rows(cfg.rl_rows, cfg.seed + 2, tinyworld.rl_mix(cfg.rl_courtesy))),
            "judged_pairs": write_rows(ctx.output("judged_pairs"), tinyworld.judged_pairs(cfg.judged_pairs, cfg.seed + 3)),
        }
        return {f"rows/{k}": v for k, v in counts.items()}
