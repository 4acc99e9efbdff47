"""Typed, validated option sets for spaces, strategies and estimators (one frozen dataclass each)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping


class OptionError(ValueError):
    """A bad option value; `key` names the option so forms and CLIs can point at it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           choices: tuple | None = None) -> Any:
    """Declare one option of a config dataclass with its help text and bounds."""
    meta = {"help": help, "min": min, "max": max, "choices": choices}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """What a form or CLI needs to know about one option."""

    name: str
    kind: str  # "int", "float", "bool", "str", "multi"
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple | None
    item_type: type | None = None  # element type of a "multi" option


def option_specs(config_cls: type) -> list[OptionSpec]:
    hints = typing.get_type_hints(config_cls)
    specs = []
    for f in dataclasses.fields(config_cls):
        hint = hints[f.name]
        item_type = None
        if hint is bool:
            kind = "bool"
        elif hint is int:
            kind = "int"
        elif hint is float:
            kind = "float"
        elif hint is str:
            kind = "str"
        elif typing.get_origin(hint) is tuple:
            kind = "multi"
            item_type = typing.get_args(hint)[0]
        else:  # pragma: no cover - a programming error in a config class
            raise TypeError(f"unsupported option type {hint!r} for {config_cls.__name__}.{f.name}")
        specs.append(OptionSpec(f.name, kind, f.default, f.metadata.get("help", ""), f.metadata.get("min"),
                                f.metadata.get("max"), f.metadata.get("choices"), item_type))
    return specs


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce_scalar(spec: OptionSpec, typ: type, raw: Any) -> Any:
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise OptionError(spec.name, f"expected true or false, got {raw!r}")
    if typ is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise OptionError(spec.name, f"expected an integer, got {raw!r}")
        try:
            return int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
        except ValueError:
            raise OptionError(spec.name, f"expected an integer, got {raw!r}") from None
    if typ is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise OptionError(spec.name, f"expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise OptionError(spec.name, "expected a finite number")
        return value
    return str(raw).strip()


def _check_bounds(spec: OptionSpec, value: Any) -> None:
    if spec.min is not None and value < spec.min:
        raise OptionError(spec.name, f"must be at least {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise OptionError(spec.name, f"must be at most {spec.max:g}")
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(str(c) for c in spec.choices)
        raise OptionError(spec.name, f"{value!r} is not one of: {allowed}")


def coerce(spec: OptionSpec, raw: Any) -> Any:
    """Turn a raw value (CLI string, form value, JSON value) into the option's type, checking bounds."""
    if spec.kind == "multi":
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        items = [i for i in (x.strip() if isinstance(x, str) else x for x in items) if i != ""]
        values = []
        for item in items:
            value = _coerce_scalar(spec, spec.item_type, item)
            _check_bounds(spec, value)
            if value not in values:
                values.append(value)
        if not values:
            raise OptionError(spec.name, "choose at least one value")
        if spec.choices is not None:  # keep the declared order so equal sets compare equal
            values.sort(key=spec.choices.index)
        return tuple(values)
    typ = {"int": int, "float": float, "bool": bool, "str": str}[spec.kind]
    value = _coerce_scalar(spec, typ, raw)
    _check_bounds(spec, value)
    return value


def parse_config(config_cls: type, raw: Mapping[str, Any] | None) -> Any:
    """Build a validated config from raw values; unknown keys and bad values raise OptionError."""
    raw = dict(raw or {})
    specs = {s.name: s for s in option_specs(config_cls)}
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise OptionError(unknown[0], f"unknown option (known: {', '.join(sorted(specs)) or 'none'})")
    values = {name: coerce(specs[name], value) for name, value in raw.items()}
    try:
        return config_cls(**values)
    except OptionError:
        raise
    except ValueError as exc:  # cross-field checks in __post_init__
        raise OptionError("__all__", str(exc)) from None


def config_to_json(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
