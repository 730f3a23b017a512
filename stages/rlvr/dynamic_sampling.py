"""Dynamic sampling for GRPO (DAPO's filter_groups, open-instruct's filter_zero_std_samples): a group whose
completions all got the same reward has zero advantage, so it adds no gradient, only a smaller batch. Such
groups are dropped and the batch is refilled with groups generated for further prompts, up to
`max_refill_batches` extra generation batches; if that is not enough, dropped groups fill the rest (as plain
GRPO would have trained on them). Logged per generation: dynamic_sampling/dropped_groups (in the first batch),
dynamic_sampling/refill_batches and dynamic_sampling/varied_fraction (of the groups trained on).
TRL's own metrics (reward, frac_reward_zero_std, ...) average every batch generated, refills included. A kept
group's advantages are those computed in its own generation batch (with scale_rewards: batch, that batch's std).

Resume stays exact. Refill prompts are not pulled from the trainer's dataloader: on resume the trainer skips
a count of batches, so extra pulls would shift every later batch. They are drawn from the dataset by a
permutation seeded with (seed, global step): the same on every rank, and the same after a resume. Checkpoints
fall on generation boundaries (the stage checks save_steps), so the RNG state a refill samples from is
restored too."""
from dataclasses import dataclass, field


@dataclass
class DynamicSampling:
    enabled: bool = field(default=False, metadata={"help": "drop groups whose rewards are all equal; refill from further prompts"})
    max_refill_batches: int = field(default=4, metadata={
        "ge": 0, "help": "extra generation batches per step at most, to replace groups whose rewards are all equal"})


def check(ds: DynamicSampling, per_device_batch: int, steps_per_generation: int, num_generations: int) -> list[tuple[str, str]]:
    """Groups are kept or dropped per process, so each process's generation batch must hold whole groups."""
    if ds.enabled and (per_device_batch * steps_per_generation) % num_generations:
        return [("dynamic_sampling.enabled", f"per_device_train_batch_size x steps_per_generation = "
                 f"{per_device_batch * steps_per_generation} must be a multiple of num_generations={num_generations}, "
                 "so that each process generates whole groups")]
    return []


def trainer_class(base, ds: DynamicSampling):
    """`base` (TRL's GRPOTrainer or a subclass) with dynamic sampling, or `base` itself when it is off."""
    if not ds.enabled:
        return base

    class DynamicSamplingTrainer(base):
        def _calculate_rewards(self, *args, **kwargs):
            rewards = super()._calculate_rewards(*args, **kwargs)
            self._group_rewards = rewards  # every process's rows (TRL gathers them): one decision on all ranks
            return rewards

        def _generate_and_score_completions(self, inputs):
            generate = super()._generate_and_score_completions
            return refilled(self, inputs, generate, ds.max_refill_batches) if self.model.training else generate(inputs)

    return DynamicSamplingTrainer


def refilled(trainer, inputs: list[dict], generate, max_refills: int) -> dict:
    """This process's generation batch, of its usual size, made of groups with varied rewards where possible."""
    import torch

    n, rank, world = trainer.num_generations, trainer.accelerator.process_index, trainer.accelerator.num_processes
    need = len(inputs) // n  # groups per process
    picks, spare, have = [], [], torch.zeros(world, dtype=torch.long)
    for refills in range(max_refills + 1):
        batch = generate(inputs if refills == 0 else refill_prompts(trainer, need, refills))
        varied = varied_groups(trainer, trainer._group_rewards).view(world, need).cpu()
        picks += [(batch, g) for g in varied[rank].nonzero().flatten().tolist()]
        if refills == 0:
            spare = [(batch, g) for g in (~varied[rank]).nonzero().flatten().tolist()]
            dropped = int((~varied).sum())
        have += varied.sum(dim=1)
        if (have >= need).all():  # the same verdict on every rank: they generate in lockstep
            break
    metrics = trainer._metrics["train"]
    metrics["dynamic_sampling/dropped_groups"].append(dropped)
    metrics["dynamic_sampling/refill_batches"].append(refills)
    metrics["dynamic_sampling/varied_fraction"].append(float(have.clamp(max=need).sum()) / (world * need))
    return merged(trainer, (picks + spare)[:need])


def varied_groups(trainer, rewards) -> "torch.Tensor":
    """Per group (over all processes): whether its weighted rewards differ, judged as TRL's frac_reward_zero_std."""
    import torch

    total = (rewards * trainer.reward_weights.to(rewards.device).unsqueeze(0)).nansum(dim=1)
    std = total.view(-1, trainer.num_generations).std(dim=1)
    return ~torch.isclose(std, torch.zeros_like(std))


def refill_prompts(trainer, need: int, refill: int) -> list[dict]:
    """`need` further prompts for this process, each repeated num_generations times, as the sampler does. Drawn
    from a permutation seeded by (seed, global step): refill k of a step takes the k-th slice for every rank."""
    import torch

    dataset, n = trainer.train_dataset, trainer.num_generations
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(
        trainer.args.seed * 1_000_003 + trainer.state.global_step)).tolist()
    start = ((refill - 1) * trainer.accelerator.num_processes + trainer.accelerator.process_index) * need
    return [dataset[order[(start + i) % len(order)]] for i in range(need) for _ in range(n)]


def merged(trainer, picks: list[tuple[dict, int]]) -> dict:
    """One batch from the picked groups of several generation batches: per-row tensors concatenated, prompts
    re-padded on the left and completions on the right to the widest, num_items_in_batch recounted."""
    import torch
    import torch.nn.functional as F

    n, pad_id = trainer.num_generations, trainer._tokenizer.pad_token_id
    parts = []  # (batch, row indices), one per run of picks from the same batch
    for batch, g in picks:
        if parts and parts[-1][0] is batch:
            parts[-1][1].extend(range(g * n, (g + 1) * n))
        else:
            parts.append((batch, list(range(g * n, (g + 1) * n))))
    out = {}
    for key, first in parts[0][0].items():
        if key == "num_items_in_batch":
            continue
        if not (torch.is_tensor(first) and first.dim() in (1, 2)):
            raise ValueError(f"dynamic_sampling: cannot merge the batch field {key!r} (multimodal batches are not supported)")
        values = [b[key][torch.tensor(rows, device=first.device)] for b, rows in parts]
        width = max(v.shape[-1] for v in values)
        fill = pad_id if key.endswith("_ids") else 0
        if first.dim() == 2:
            values = [F.pad(v, (width - v.shape[1], 0) if key.startswith("prompt") else (0, width - v.shape[1]), value=fill)
                      for v in values]
        out[key] = torch.cat(values)
    loss_mask = out["completion_mask"] * out.get("tool_mask", 1)
    out["num_items_in_batch"] = trainer.accelerator.gather(loss_mask.sum()).sum()
    return out
