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
    from posttrain.schema import suggest

    found = _scheduler_arguments(train.lr_scheduler_type)
    if found is None:
        return []  # an unknown name, reported by training._check_names
    params, var_keyword = found
    if var_keyword:
        return []  # passed through to a class whose own errors name them
    given_by_trainer = {"optimizer", "num_warmup_steps", "num_training_steps"}
    constant = train.lr_scheduler_type in ("constant", "constant_with_warmup")
    takes = [] if constant else [p for p in params if p not in given_by_trainer]  # transformers passes constant ones nothing
    return [(f"train.lr_scheduler_kwargs.{key}", f"not an argument of the {train.lr_scheduler_type} schedule"
             f"{suggest(key, takes)}; it takes: {', '.join(takes) or 'none'}")
            for key in train.lr_scheduler_kwargs if key not in takes]


def _scheduler_arguments(name: str) -> tuple[list[str], bool] | None:
    """(argument names, takes **kwargs) of the function transformers builds schedule `name` with, read from its
    source: importing transformers.optimization would import torch, and validate/plan/config must stay cheap."""
    import ast
    import importlib.util
    from pathlib import Path

    root = Path(importlib.util.find_spec("transformers").origin).parent
    members = {}  # SchedulerType member name -> its value
    for node in ast.walk(ast.parse((root / "trainer_utils.py").read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "SchedulerType":
            members = {t.id: stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                       for t in stmt.targets if isinstance(t, ast.Name) and isinstance(stmt.value, ast.Constant)}
    tree = ast.parse((root / "optimization.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id == "TYPE_TO_SCHEDULER_FUNCTION" and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Attribute) and members.get(key.attr) == name and isinstance(value, ast.Name):
                    args = functions[value.id].args
                    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs], args.kwarg is not None
    return None


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
