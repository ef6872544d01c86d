"""The operator's settings, one source for the app and the CLI: a frozen dataclass whose fields carry
their help text and environment variable. A value comes from a command-line flag, else from the
environment, else from the field's default; `--help` says which variable and which default.

    p = argparse.ArgumentParser(); add_arguments(p)        # --checkpoint-dir, --data-dir, ...
    settings = Settings.from_args(p.parse_args())          # flags > FLOWERDEMO_* > defaults
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flowerdemo.config import ConfigError

MB = 1024**2


def _setting(default: Any, why: str, *, env: str | None = None, kind: type | None = None, flag: str | None = None,
             minimum: int | None = None, maximum: int | None = None, many: bool = False, factory: Any = None,
             shown: str | None = None, metavar: str | None = None) -> Any:
    """A Settings field: `why` is its --help text; `env` its variable (default FLOWERDEMO_<FIELD>);
    `kind` parses one value (default: the default's type; bool: a --flag/--no-flag pair, true/false in the
    variable); `many`: a repeatable flag, an os.pathsep-separated variable; `minimum`/`maximum`: the accepted
    range of a number; `shown`: the default as --help states it, when the value alone would mislead."""
    kind = kind or (Path if isinstance(default, Path) else type(default))
    meta = {"help": why, "env": env, "kind": kind, "flag": flag, "min": minimum, "max": maximum,
            "many": many, "shown": shown, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Operator choices for the app (and the CLI's --out / --cache-dir): flags, FLOWERDEMO_* variables, defaults."""

    checkpoint_dir: Path = _setting(Path("checkpoints"), "where runs are written and read; relative to the "
                                    "working directory, like the repo's bundled model")
    data_dirs: tuple[Path, ...] = _setting((), "a server folder visitors may train from by typing a path under it; "
                                           "repeatable (the variable: os.pathsep-separated); none = only uploads and "
                                           "the flowers download, folder paths refused", kind=Path, flag="--data-dir",
                                           many=True)
    keep_runs: int = _setting(20, "unpinned runs kept on disk, oldest deleted first, so a public server's disk "
                              "stays bounded; 0 = keep all", minimum=0)
    max_upload_mb: int = _setting(1024, "largest accepted upload in MB (Gradio's max_file_size): a dataset .zip "
                                  "of a few thousand photos fits", minimum=1)
    max_extract_mb: int = _setting(4096, "largest uncompressed size of an uploaded .zip in MB: stops a zip bomb "
                                   "filling the disk", minimum=1)
    cache_dir: Path = _setting(None, "cache root, kept across runs: the flowers download and fast mode's feature "
                               "cache (<cache>/features)", env="FLOWERDEMO_CACHE", kind=Path,
                               factory=lambda: Path.home() / ".cache" / "flowerdemo")
    work_dir: Path = _setting(None, "private scratch space (extracted uploads, downloads), pruned by age",
                              kind=Path, factory=lambda: Path(tempfile.gettempdir()) / "flowerdemo-app")
    host: str | None = _setting(None, "interface to listen on; 0.0.0.0 in a container (Gradio's own variable)",
                                env="GRADIO_SERVER_NAME", kind=str, flag="--host")
    port: int | None = _setting(None, "port to listen on (Gradio's own variable)", env="GRADIO_SERVER_PORT", kind=int,
                                flag="--port", minimum=1, maximum=65535)
    default_model: str | None = _setting(None, "the model every new visitor gets: a run folder under the checkpoint "
                                         "dir, or a run directory's path; visitors' own runs never replace it",
                                         kind=str, metavar="RUN",
                                         shown="the bundled flowers5-lite2, else the oldest run the operator put there")
    share_runs: bool = _setting(False, "list every visitor's runs to all visitors; off, a visitor sees only the "
                                "operator's runs, their own, and runs shared with them by code or link")
    runs_per_visitor: int = _setting(5, "runs a visitor's trainings keep, their oldest deleted first: one "
                                     "visitor cannot fill a shared server's disk", minimum=1)
    uploads_per_visitor: int = _setting(3, "checkpoints a visitor's uploads and Hub loads keep, their oldest "
                                        "deleted first", minimum=1)
    runs_disk_mb: int = _setting(4096, "disk all runs may use together in MB, oldest unpinned deleted first "
                                 "(the default model and pinned runs never); 0 = no limit", minimum=0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["kind"] is str and value is not None and (not str(value).strip() or "\x00" in str(value)):
                raise ConfigError(f"{f.name}={value!r} is not accepted; {_accepted(f)}")
            if isinstance(value, int) and not _in_range(f, value):
                raise ConfigError(f"{f.name}={value} is not accepted; {_accepted(f)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by the environment variables that are set (and not empty)."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(env_var(f), "")
            if raw.strip():
                values[f.name] = _parse(f, raw)
        return cls(**values)

    @classmethod
    def one_from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> Any:
        """One setting from the environment, else its default, without reading (or failing on) the others:
        for code far from the app's start-up, e.g. the training engine's feature cache."""
        f = _FIELDS[name]
        raw = (os.environ if environ is None else environ).get(env_var(f), "")
        return _parse(f, raw) if raw.strip() else getattr(cls(), name)

    @classmethod
    def from_args(cls, ns: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """The flags given (see `add_arguments`) over the environment over the defaults."""
        given = {}
        for f in fields(cls):
            value = getattr(ns, f.name, None)
            if value is not None:
                given[f.name] = tuple(value) if f.metadata["many"] else value
        return replace(cls.from_env(environ), **given)

    def folder(self, name: str) -> Path:
        """A private scratch folder of the app (uploads, downloads), created on demand."""
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


_FIELDS = {f.name: f for f in fields(Settings)}


def env_var(f: Field) -> str:
    return f.metadata["env"] or f"FLOWERDEMO_{f.name.upper()}"


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str] | None = None,
                  flags: Mapping[str, str] | None = None) -> None:
    """Add one flag per Settings field (or only `names`), e.g. --checkpoint-dir; `flags` renames some
    (the CLI's train calls checkpoint_dir --out). Unset flags stay None: `Settings.from_args` then takes
    the environment or the default, which the help shows in brackets."""
    wanted = None if names is None else set(names)
    group = parser.add_argument_group("settings (a flag, else its environment variable, else the default)")
    for f in fields(Settings):
        if wanted is not None and f.name not in wanted:
            continue
        flag = (flags or {}).get(f.name) or f.metadata["flag"] or "--" + f.name.replace("_", "-")
        kind = f.metadata["kind"]
        text = f"{f.metadata['help']} [{env_var(f)}, else {_shown_default(f)}]".replace("%", "%%")
        if kind is bool:  # --share-runs / --no-share-runs; unset stays None, as for the others
            group.add_argument(flag, dest=f.name, default=None, help=text, action=argparse.BooleanOptionalAction)
            continue
        group.add_argument(flag, dest=f.name, type=kind, default=None, help=text,
                           action="append" if f.metadata["many"] else "store",
                           metavar=f.metadata["metavar"] or {Path: "DIR", int: "N"}.get(kind))


def export_cache_dir(path: Path) -> None:
    """Make `path` this process's FLOWERDEMO_CACHE, for a --cache-dir flag to reach the training engine, which
    finds its feature cache (and hands it to its worker processes) through the environment. Call at
    startup, never per request: the environment is the whole process's."""
    os.environ[env_var(_FIELDS["cache_dir"])] = str(path)


def _parse(f: Field, raw: str) -> Any:
    kind, name = f.metadata["kind"], env_var(f)
    parts = [p for p in raw.split(os.pathsep) if p] if f.metadata["many"] else [raw.strip()]
    values = []
    for part in parts:
        try:
            value = _bool(part) if kind is bool else kind(part)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not accepted; {_accepted(f)}") from None
        if isinstance(value, int) and not _in_range(f, value):
            raise ConfigError(f"{name}={raw!r} is not accepted; {_accepted(f)}")
        values.append(value)
    return tuple(values) if f.metadata["many"] else values[0]


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _bool(text: str) -> bool:
    """A switch from the environment: bool("false") would be True."""
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


def _in_range(f: Field, value: int) -> bool:
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _accepted(f: Field) -> str:
    lo, hi = f.metadata["min"], f.metadata["max"]
    if f.metadata["kind"] is bool:
        return "expected true or false (also 1/0, yes/no, on/off)"
    if f.metadata["kind"] is str:
        return "expected a non-empty name or path"
    if f.metadata["kind"] is int:
        bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        return f"expected a whole number {bounds} (default: {_shown_default(f)})"
    return f"expected {'os.pathsep-separated paths' if f.metadata['many'] else 'a path'}"


def _shown_default(f: Field) -> str:
    if f.metadata["shown"]:
        return f.metadata["shown"]
    default = f.default_factory() if f.default is MISSING else f.default
    if default is None:
        return "Gradio's default"
    if default == ():
        return "none"
    if isinstance(default, Path):
        try:
            return str(Path("~") / default.relative_to(Path.home()))
        except ValueError:
            return str(default)
    return str(default)
