"""Every stage kind. Importing this package registers them in posttrain.stage.STAGES."""
from posttrain.stages import distill, dpo, eval, generate, pretrain, prune, report, reward_model, rlvr, select, sft, tinyworld  # noqa: F401
