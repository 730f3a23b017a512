"""Checks of a training stage's `train` block beyond types, against what transformers and TRL take: max_steps, the
scheduler's keyword arguments and the values of `trl_args` (their names are checked by training.check_trl_args)."""


def train_problems(train) -> list[tuple[str, str]]:
    """max_steps 0 (TRL would still take one step, at learning rate 0, and the stage would say complete) and the
    scheduler's keyword arguments."""
    problems = scheduler_kwargs_problems(train)
    if train.max_steps == 0:
        problems.append(("train.max_steps", "0 steps trains nothing; give a positive number, or -1 to train "
                                            "num_train_epochs"))
    return problems


def scheduler_kwargs_problems(train) -> list[tuple[str, str]]:
    """lr_scheduler_kwargs against the arguments of the scheduler transformers builds (an unknown one would crash the
    first step, or, for constant schedules, be silently ignored)."""
    if not train.lr_scheduler_kwargs:
        return []
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    from posttrain.schema import suggest

    try:
        kind = SchedulerType(train.lr_scheduler_type)
    except ValueError:
        return []  # reported by training._check_names
    params = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[kind]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []  # passed through to a class whose own errors name them
    given_by_trainer = {"optimizer", "num_warmup_steps", "num_training_steps"}
    takes = [] if kind in (SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP) else \
        [p for p in params if p not in given_by_trainer]  # transformers passes nothing more to constant schedules
    return [(f"train.lr_scheduler_kwargs.{key}", f"not an argument of the {kind.value} schedule{suggest(key, takes)}; "
             f"it takes: {', '.join(takes) or 'none'}") for key in train.lr_scheduler_kwargs if key not in takes]


def trl_value_problems(config_cls, settable: set[str], trl_args: dict) -> list[tuple[str, str]]:
    """The values of the trl_args a recipe may set (`settable`; the others are reported by name) against the types
    TRL's dataclass declares for them (the schema's checks); a type the schema cannot read is left to TRL."""
    import typing

    from posttrain import schema

    hints, found = typing.get_type_hints(config_cls), []
    for key, value in trl_args.items():
        if key not in settable:
            continue
        try:
            schema.check_value(hints[key], value, f"train.trl_args.{key}", found, lambda *_: "not an input here")
        except (TypeError, NameError):
            pass
    return found
