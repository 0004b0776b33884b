"""Checks of single settings, so that a bad value stops start-up with the field named and
the values it accepts, instead of an agent that starts and then fails every command.

Lists are read from the environment as JSON (``["/srv/a","/srv/b"]``) or, as people write
them in env files, as comma lists (``/srv/a,/srv/b``, ``-1,-2``).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode

# DINOv2 ViT-S/14 has 12 transformer blocks; -1 is the last, 0 the first.
VIT_BLOCKS = 12
DEVICE_FORMAT = re.compile(r"auto|cpu|cuda(:\d+)?")


def split_list(value: Any) -> Any:
    """A list setting written as JSON or as a comma list; lists (YAML) pass unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f'not a JSON list ({exc}); write a,b or ["a","b"]') from None
    return [part.strip() for part in text.split(",") if part.strip()]


def check_device(value: str) -> str:
    text = value.strip().lower()
    if not DEVICE_FORMAT.fullmatch(text):
        raise ValueError("must be auto, cpu, cuda or cuda:N (N: the GPU's index, e.g. cuda:0)")
    return text


def upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def check_layers(layers: list[int]) -> list[int]:
    if not layers:
        raise ValueError(f"must name at least one ViT block (-{VIT_BLOCKS}..{VIT_BLOCKS - 1})")
    bad = [i for i in layers if not -VIT_BLOCKS <= i < VIT_BLOCKS]
    if bad:
        raise ValueError(
            f"{bad}: ViT-S/14 has {VIT_BLOCKS} blocks, so each must be in "
            f"-{VIT_BLOCKS}..{VIT_BLOCKS - 1} (-1: the last)"
        )
    blocks = [i % VIT_BLOCKS for i in layers]
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"{layers} names one block twice (-1 and {VIT_BLOCKS - 1} are the same)")
    return layers


def _topic_problem(value: str, levels: bool) -> str | None:
    if not value:
        return "must not be empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not hold control characters"
    if "+" in value or "#" in value:
        return "must not hold the MQTT wildcards + or #"
    if value.startswith("$"):
        return "must not start with $ (reserved by brokers)"
    if not levels and "/" in value:
        return "must be one MQTT topic level (no /)"
    if levels and "" in value.split("/"):
        return "must not hold empty topic levels (// or a leading or trailing /)"
    return None


def topic_level(value: str) -> str:
    """An id that becomes one MQTT topic level (agent id, shared group, pool)."""
    problem = _topic_problem(value, levels=False)
    if problem:
        raise ValueError(problem)
    return value


def topic_levels(value: str) -> str:
    """A topic prefix: one or more levels (``bdi``, ``plant1/bdi``)."""
    problem = _topic_problem(value, levels=True)
    if problem:
        raise ValueError(problem)
    return value


def optional_topic_level(value: str | None) -> str | None:
    return None if value is None else topic_level(value)


def non_empty_path(value: Any) -> Any:
    """An empty variable (``BDI_DATA_ROOT=`` in an env file) would be the current folder:
    the data would land wherever the agent was started."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty (leave the variable out for the default)")
    return value


WEIGHTS_WORDS = ("hub", "random")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors")


def check_weights(value: str) -> str:
    """``hub``, ``random`` or a checkpoint's path. A missing file is not refused here: the
    agent starts without weights and ``health`` says how to provide them."""
    text = value.strip()
    if text.lower() in WEIGHTS_WORDS:
        return text.lower()
    if not text.lower().endswith(WEIGHTS_SUFFIXES):
        raise ValueError(
            "must be hub, random or the path of a .pth, .pt or .safetensors checkpoint"
        )
    return text


def readable_file(value: Path | None) -> Path | None:
    """A file the agent opens when it connects (TLS): refused at start rather than a
    traceback from the MQTT library once the adapter is built."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file")
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as exc:
        raise ValueError(unreadable(path, "file", exc)) from None
    return path


PathList = Annotated[list[Path], NoDecode, BeforeValidator(split_list)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]
Layers = Annotated[list[int], NoDecode, BeforeValidator(split_list), AfterValidator(check_layers)]
Device = Annotated[str, AfterValidator(check_device)]
TopicLevel = Annotated[str, AfterValidator(topic_level)]
OptionalTopicLevel = Annotated[str | None, AfterValidator(optional_topic_level)]
TopicLevels = Annotated[str, AfterValidator(topic_levels)]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(upper)]
SettingPath = Annotated[Path, BeforeValidator(non_empty_path)]
OptionalPath = Annotated[Path | None, BeforeValidator(non_empty_path)]
ReadableFile = Annotated[
    Path | None, BeforeValidator(non_empty_path), AfterValidator(readable_file)
]
Weights = Annotated[str, AfterValidator(check_weights)]


def env_name(loc: tuple[Any, ...]) -> str:
    """``("mqtt", "port")`` -> ``BDI_MQTT__PORT``; list positions are left out."""
    return "BDI_" + "__".join(str(p).upper() for p in loc if not isinstance(p, int))


def error_line(error: dict[str, Any]) -> str:
    """One line per bad value: the YAML path, its environment name, what is wrong."""
    loc = tuple(error["loc"])
    if not loc:  # a check across fields: its message names them
        return f"  {str(error['msg']).removeprefix('Value error, ')}"
    field = ".".join(str(part) for part in loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "not a setting (a typo? configs/agent.yaml lists every name)"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"  {field} ({env_name(loc)}): {message}{shown}"


def unreadable(path: Path, what: str, exc: Exception) -> str:
    """Why ``path`` cannot be read, and for a permission problem, by whom and the fix."""
    if not isinstance(exc, PermissionError):
        reason = "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        return f"{what} {path} cannot be read: {reason}"
    user, group = _name(pwd.getpwuid, os.geteuid()), _name(grp.getgrgid, os.getegid())
    folder = path.absolute().parent
    return (
        f"{what} {path} cannot be read by user {user} (group {group}): permission denied. "
        f"Give it to that group: chgrp {group} {folder} {path} && chmod 0750 {folder} "
        f"&& chmod 0640 {path}"
    )


def _name(lookup: Any, number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:  # an id without a name (containers)
        return str(number)


# BDI_* names that are not settings: the config file's path, and names of the deployment
# and test tooling around the agent.
NOT_SETTINGS = frozenset({"BDI_CONFIG", "BDI_VARIANT", "BDI_SOAK_S", "BDI_RELIABILITY_OUT"})


def unknown_env_names(environ: dict[str, str], fields: set[str], legacy: set[str]) -> list[str]:
    """``BDI_<NAME>`` variables that name no top-level setting: ignored, so probably typos.
    (A wrong name inside a section, ``BDI_MQTT__HOTS``, is refused by the section itself.)"""
    unknown = []
    for name in environ:
        if not name.startswith("BDI_") or name in NOT_SETTINGS or name in legacy:
            continue
        head = name.removeprefix("BDI_").split("__")[0].lower()
        if head not in fields:
            unknown.append(name)
    return sorted(unknown)
