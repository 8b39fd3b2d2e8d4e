"""Training options from YAML files, merged with a recipe and command-line flags.

``crossformers train --config FILE.yaml`` reads a mapping of option names (the :class:`TrainConfig` fields, like the
``dest`` names of timm's ``train.py``; ``batch-size`` and ``batch_size`` both work) to values. JSON is valid YAML, so
the ``config.json`` of a run works too. Precedence, lowest first: defaults < ``--recipe`` < ``--config`` file <
flags typed on the command line. Every run writes its fully resolved options to ``RUN/config.yaml``;
``crossformers train --config RUN/config.yaml`` repeats the run (add ``--output`` for a new directory).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import ConfigError

__all__ = ["load_config_file", "check_option_types", "config_to_yaml", "merge_train_options", "log_merge_notes",
           "CONFIG_YAML"]

#: File name of the resolved options inside a run directory.
CONFIG_YAML = "config.yaml"


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as loaded from YAML) fits the annotation ``tp`` (ints are accepted for floats, lists for
    tuples; bools are never numbers)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(tp)
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_type_ok(v, a) for v, a in zip(value, args, strict=True)))
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        return isinstance(value, dict) and all(_type_ok(k, key_t) and _type_ok(v, val_t) for k, v in value.items())
    return isinstance(value, origin or tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if typing.get_origin(tp) is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def check_option_types(values: Mapping[str, Any], origin: str = "config",
                       config_cls: type[TrainConfig] = TrainConfig) -> dict[str, Any]:
    """Check option names and value types against ``config_cls`` (:class:`TrainConfig`, or a subclass such as the
    dense trainer's); returns the options with canonical names (``-`` -> ``_``) and tuples for tuple fields.

    Raises:
        ConfigError: ``"{origin}: unknown option KEY (did you mean ...?)"`` or ``"{origin}: option KEY must be
            TYPE, got VALUE"`` for the first bad key.
    """
    hints = typing.get_type_hints(config_cls)
    names = sorted(f.name for f in dataclasses.fields(config_cls))
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in hints:
            close = difflib.get_close_matches(key, names, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see `crossformers train --help`)"
            raise ConfigError(f"{origin}: unknown option {raw_key!r}{hint}")
        tp = hints[key]
        if not _type_ok(value, tp):
            raise ConfigError(f"{origin}: option {raw_key!r} must be {_type_name(tp)}, got {value!r}")
        if typing.get_origin(tp) is tuple or (isinstance(value, list) and key in ("scale", "ratio")):
            value = tuple(value)
        out[key] = value
    return out


def load_config_file(path: str | os.PathLike, config_cls: type[TrainConfig] = TrainConfig) -> dict[str, Any]:
    """Read training options (fields of ``config_cls``) from a YAML (or JSON) file.

    Returns:
        Option name -> value, names canonical (``batch_size``), types checked (see :func:`check_option_types`).

    Raises:
        ConfigError: unreadable file, invalid YAML, not a mapping, unknown option, wrong type.
    """
    import yaml

    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value (e.g. `epochs: 10`), "
                          f"not {type(values).__name__}")
    return check_option_types(values, origin=f"config file {p}", config_cls=config_cls)


def config_to_yaml(cfg: TrainConfig) -> str:
    """YAML text of every option of ``cfg`` (sorted keys); loading it with :func:`load_config_file` gives ``cfg``."""
    import yaml

    command = "crossformers dense train" if "task" in cfg.to_dict() else "crossformers train"
    header = ("# crossformers training options, fully resolved (defaults, recipe, config file and flags).\n"
              f"# Repeat this run: {command} --config config.yaml --output NEW_DIR\n")
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=True, default_flow_style=None)


def log_merge_notes(notes: list[str]) -> None:
    """Show the notes of :func:`merge_train_options` as warnings of the ``crossformers.train`` logger, once: on the
    main process only (``RANK`` 0 or unset under torchrun)."""
    if int(os.environ.get("RANK", "0")) == 0:
        for line in notes:
            logging.getLogger("crossformers.train").warning("%s", line)


def merge_train_options(flags: Mapping[str, Any], config_file: str | os.PathLike | None = None,
                        recipe: str | None = None, base: TrainConfig | None = None,
                        config_cls: type[TrainConfig] = TrainConfig) -> tuple[TrainConfig, list[str]]:
    """Combine defaults (or ``base``) < ``recipe`` < ``config_file`` < ``flags``.

    Args:
        flags: options typed on the command line (field -> value; never argparse defaults).
        config_file: a YAML/JSON file of options, or ``None``.
        recipe: a recipe name (:mod:`crossformers.engine.recipes`), or ``None``.
        base: the options below everything (default ``config_cls()``; e.g. a resumed run's saved options).
        config_cls: the options class (:class:`TrainConfig`, or the dense trainer's subclass).

    Returns:
        The resolved config (not validated yet) and notes to show the user: recipe values that will not be
        applied, and which recipe values were overridden.

    Raises:
        ConfigError: bad file, unknown recipe, a recipe of another command, ``recipe`` together with ``resume``.
    """
    explicit = load_config_file(config_file, config_cls) if config_file else {}
    explicit.update(check_option_types(flags, origin="command line", config_cls=config_cls))
    notes: list[str] = []
    if recipe is None:
        return (base or config_cls()).replace(**explicit), notes
    if explicit.get("resume"):
        raise ConfigError("--recipe cannot be combined with --resume: a resumed run keeps its own options "
                          "(drop --recipe)")
    from .recipes import resolve_recipe

    res = resolve_recipe(recipe, explicit, base=base, config_cls=config_cls)
    if res.overridden:
        notes.append(f"recipe {recipe}: overridden by explicit options: {', '.join(res.overridden)}")
    notes.extend(f"recipe {recipe}: {line}" for line in res.not_applied)
    return res.config, notes
