"""Every stage kind. Importing this package registers them in posttrain.stage.STAGES."""
from posttrain.stages import dpo, generate, pretrain, rlvr, sft, tinyworld  # noqa: F401
