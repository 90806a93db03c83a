"""params.yaml for the stages: loading, the checked accessors, and what several stages share.

Each stage calls `load()` once and reads its section through the accessors, for example
`p.int("calibration.size", 1, 10000)`; an out-of-range or mistyped value raises
PipelineError("params.yaml: calibration.size must be between 1 and 10000, got 0").  Every param
is checked in the stage layer (here, in `stages.shared` and in each stage's `main`); the package
raises errors about values only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from hailopipe.errors import PipelineError

HW_ARCHS = ("hailo8", "hailo8r", "hailo8l", "hailo15h", "hailo15m", "hailo15l", "hailo10h", "hailo10p", "hailo12l")


class Params:
    """The parsed params.yaml plus the path it came from (for error messages)."""

    def __init__(self, data: dict, path: str):
        self.data, self.path = data, path

    def _lookup(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PipelineError(f"{self.path}: missing parameter {key}")
            node = node[part]
        return node

    def value(self, key: str) -> Any:
        """The value of `key` as the file has it, unchecked (PipelineError if it is missing)."""
        return self._lookup(key)

    def fail(self, key: str, what: str, value: Any) -> PipelineError:
        return PipelineError(f"{self.path}: {key} {what}, got {value!r}")

    def int(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        value = self._lookup(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer", value)
        _check_range(self, key, value, lo, hi)
        return value

    def float(self, key: str, lo: float | None = None, hi: float | None = None) -> float:
        value = self._lookup(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self.fail(key, "must be a number", value)
        _check_range(self, key, float(value), lo, hi)
        return float(value)

    def choice(self, key: str, choices: Sequence[str]) -> str:
        value = self._lookup(key)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}", value)
        return value

    def str(self, key: str, pattern: str | None = None) -> str:
        value = self._lookup(key)
        if not isinstance(value, str) or not value or (pattern and not re.fullmatch(pattern, value)):
            raise self.fail(key, f"must be a string matching {pattern or '.+'}", value)
        return value

    def int_list(self, key: str, lo: int = 1, hi: int | None = None, min_len: int = 1) -> list[int]:
        value = self._lookup(key)
        if not isinstance(value, list) or len(value) < min_len:
            raise self.fail(key, f"must be a list of at least {min_len} integers", value)
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int) or item < lo or (hi is not None and item > hi):
                bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
                raise self.fail(f"{key}[{i}]", f"must be an integer {bound}", item)
        return list(value)

    def float_list(self, key: str, lo: float | None = None, above: float | None = None) -> list[float]:
        """A non-empty list of finite numbers, each >= `lo` and > `above` where given."""
        value = self._lookup(key)
        if not isinstance(value, list) or not value:
            raise self.fail(key, "must be a non-empty list of numbers", value)
        for i, item in enumerate(value):
            if (isinstance(item, bool) or not isinstance(item, (int, float)) or item != item
                    or item in (float("inf"), float("-inf"))):
                raise self.fail(f"{key}[{i}]", "must be a finite number", item)
            _check_range(self, f"{key}[{i}]", float(item), lo, None)
            if above is not None and not item > above:
                raise self.fail(f"{key}[{i}]", f"must be > {above:g}", item)
        return [float(v) for v in value]

    def float_pair(self, key: str) -> tuple[float, float]:
        value = self._lookup(key)
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or not value[0] < value[1]):
            raise self.fail(key, "must be a list [low, high] of two numbers with low < high", value)
        return float(value[0]), float(value[1])

    def mapping(self, key: str) -> dict:
        value = self._lookup(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping", value)
        return dict(value)

    def override(self, key: str, text: str | None) -> None:
        """Set `key` from a command-line value, parsed as YAML, to be checked like the file's."""
        if text is not None:
            section, name = key.split(".")
            self.data.setdefault(section, {})[name] = yaml.safe_load(text)

    def hw_arch(self) -> str:
        return self.choice("hw_arch", HW_ARCHS)


def _check_range(p: Params, key: str, value, lo, hi) -> None:
    if lo is not None and value < lo or hi is not None and value > hi:
        if lo is not None and hi is not None:
            raise p.fail(key, f"must be between {lo} and {hi}", value)
        raise p.fail(key, f"must be >= {lo}" if lo is not None else f"must be <= {hi}", value)


def load(path: str = "params.yaml") -> Params:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: must be a mapping of sections")
    return Params(data, str(Path(path)))
