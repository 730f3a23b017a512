"""The rlvr stage kind and everything only it uses, in one room:

stage.py            the stage: its Config, validation and run (TRL's GRPOTrainer)
reward_terms.py     reward terms beyond verifiers: a reward model's score, gating one term by another
dynamic_sampling.py drop groups whose rewards are all equal and refill the batch (DAPO)
async_gen.py        `async_generation`: TRL's AsyncGRPOTrainer against a vLLM server
vllm_correction.py  TRL's importance-sampling correction of the vLLM-trainer log-prob mismatch
tools.py            Python tools the policy may call, run in the code sandbox
"""
from posttrain.stages.rlvr import stage  # noqa: F401  (registers the rlvr kind)
