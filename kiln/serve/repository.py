"""The model repository, in Triton's layout, and what is loaded from it.

    repository/
      digits/
        config.pbtxt          (optional: completed from the engine when absent)
        1/model.kiln          (an engine, or model.onnx: built at load as config.pbtxt asks)
        2/model.onnx

Each model loads on its own: one that fails is reported (index and log) with its reason
and leaves the others serving. Reloading a model that serves keeps its old versions serving
until the new ones are ready, and keeps them if the new ones fail.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from kiln.build import build_engine
from kiln.engine.engine import Engine
from kiln.errors import KilnError
from kiln.serve.errors import NotFound, ServeError, Unavailable
from kiln.serve.model import ModelVersion
from kiln.serve.model_config import (
    builder_config,
    checked_override,
    complete,
    instance_devices,
    read_config,
)
from kiln.serve.proto import pb

log = logging.getLogger("kiln.serve")

MODEL_FILES = ("model.kiln", "model.onnx")


@dataclass
class ModelEntry:
    name: str
    state: str = "UNAVAILABLE"  # READY, LOADING, UNLOADING, UNAVAILABLE (Triton's states)
    reason: str = ""
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    wanted: bool = True  # False once unloaded on request: no longer counts for readiness


class ModelRepository:
    def __init__(self, root: str | Path, *, max_queue_size: int = 1024) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise KilnError(f"model repository {self.root} is not a directory",
                            hint="give a directory holding <model>/config.pbtxt and "
                            "<model>/<version>/model.kiln (or model.onnx)")
        self.max_queue_size = max_queue_size
        self.models: dict[str, ModelEntry] = {}
        self._load_lock = threading.Lock()  # one load or unload at a time

    def model_names(self) -> list[str]:
        """The model directories in the repository, loaded or not."""
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    # ------------------------------------------------------------------ loading
    def load_all(self) -> list[str]:
        """Loads every model; returns the names of those that failed (each is logged)."""
        failed = []
        for name in self.model_names():
            try:
                self.load(name)
            except ServeError:
                failed.append(name)
        return failed

    def load(self, name: str, config_override=None) -> None:
        """(Re)loads a model: blocking, as it may build engines."""
        with self._load_lock:
            entry = self.models.setdefault(name, ModelEntry(name))
            entry.wanted = True
            if not entry.versions:
                entry.state, entry.reason = "LOADING", ""
            try:
                versions = self._load_versions(name, config_override)
            except Exception as exc:  # a broken model must not take the server down
                error = _as_serve_error(name, exc)
                if not entry.versions:
                    entry.state, entry.reason = "UNAVAILABLE", str(error)
                log.error("model %r failed to load: %s", name, error)
                raise error from None
            old = entry.versions
            entry.versions, entry.state, entry.reason = versions, "READY", ""
            log.info("model %r ready: version(s) %s on %s", name,
                     ", ".join(map(str, sorted(versions))),
                     ", ".join(sorted({d for v in versions.values() for d in v.devices})))
        _close_all(old.values())

    def unload(self, name: str) -> None:
        """Stops taking requests for the model, runs those queued, then drops it."""
        with self._load_lock:
            entry = self.models.get(name)
            if entry is None or not entry.versions:
                raise NotFound(f"model {name!r} is not loaded, so it cannot be unloaded")
            old, entry.versions = entry.versions, {}
            entry.state, entry.reason = "UNLOADING", ""
            _close_all(old.values())
            entry.state, entry.reason, entry.wanted = "UNAVAILABLE", "unloaded", False
        log.info("model %r unloaded", name)

    def _load_versions(self, name: str, config_override) -> dict[int, ModelVersion]:
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise NotFound(f"no model {name!r} in the repository {self.root}; it holds "
                           f"{', '.join(self.model_names()) or 'no models'}")
        if config_override is not None:
            config = checked_override(config_override, name)
        else:
            config = read_config(model_dir)
        versions: dict[int, ModelVersion] = {}
        try:
            for version in sorted(select_versions(model_dir, config), reverse=True):
                path = model_file(model_dir / str(version), config)
                engine, devices = _engine_for(path, config)
                complete(config, engine, devices)  # the newest version completes it, the rest check
                versions[version] = ModelVersion(config, version, engine, devices,
                                                 self.max_queue_size)
        except BaseException:
            _close_all(versions.values())
            raise
        return versions

    def close(self, timeout_s: float | None = None) -> None:
        for entry in self.models.values():
            _close_all(entry.versions.values(), timeout_s)
            entry.versions = {}

    # ------------------------------------------------------------------ lookup
    def get(self, name: str, version: str = "") -> ModelVersion:
        entry = self.models.get(name)
        if entry is None or not entry.versions:
            if entry is not None and entry.state != "READY":
                raise Unavailable(f"model {name!r} is not ready ({entry.state}"
                                  f"{': ' + entry.reason if entry.reason else ''})")
            raise NotFound(f"unknown model {name!r}; this server serves "
                           f"{', '.join(map(repr, self.ready_models())) or 'no models'}")
        versions = entry.versions
        if not version:
            return versions[max(versions)]
        try:
            number = int(version)
        except ValueError:
            raise ServeError(f"model version {version!r} is not a number") from None
        if number not in versions:
            raise NotFound(f"model {name!r} has no version {version} loaded; loaded: "
                           f"{', '.join(map(str, sorted(versions)))}")
        return versions[number]

    def ready_models(self) -> list[str]:
        return sorted(n for n, e in self.models.items() if e.versions)

    def all_ready(self) -> bool:
        """Every model meant to serve does (Triton's strict readiness)."""
        return all(e.state == "READY" for e in self.models.values() if e.wanted)

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: a row per loaded version, one for each model that is
        not loaded (with its state and reason), one for each model never tried."""
        rows = []
        for name in sorted(set(self.model_names()) | set(self.models)):
            entry = self.models.get(name)
            if entry is not None and entry.versions:
                rows += [{"name": name, "version": str(v), "state": "READY", "reason": ""}
                         for v in sorted(entry.versions)]
            elif not ready_only:
                row = {"name": name}
                if entry is not None:
                    row.update(state=entry.state, reason=entry.reason)
                rows.append(row)
        return rows


def select_versions(model_dir: Path, config) -> list[int]:
    """The versions to load, by the config's version_policy (default: the newest one)."""
    available = sorted(int(p.name) for p in model_dir.iterdir()
                       if p.is_dir() and p.name.isdigit())
    if not available:
        raise ServeError(f"model {model_dir.name!r} has no version directories",
                         hint=f"put the model in {model_dir.name}/1/model.kiln (or model.onnx)")
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        wanted = list(policy.specific.versions)
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ServeError(f"model {model_dir.name!r}: version_policy asks for version(s) "
                             f"{missing}, which are not in {model_dir}; found {available}")
        return wanted
    count = policy.latest.num_versions if choice == "latest" else 1
    return available[-max(count, 1):]


def model_file(version_dir: Path, config) -> Path:
    names = [config.default_model_filename] if config.default_model_filename else MODEL_FILES
    for name in names:
        if (version_dir / name).is_file():
            return version_dir / name
    found = sorted(p.name for p in version_dir.iterdir()) if version_dir.is_dir() else []
    raise ServeError(f"model {config.name!r} version {version_dir.name}: no "
                     f"{' or '.join(names)} in {version_dir} (found: "
                     f"{', '.join(found) or 'nothing'})",
                     hint="build an engine with `kiln build model.onnx -o "
                     f"{version_dir / 'model.kiln'}`, or put the ONNX model there")


def _engine_for(path: Path, config) -> tuple[Engine, list[str]]:
    """The engine file, or the ONNX model built for the instances' device."""
    if path.suffix == ".onnx":
        devices = instance_devices(config, None)
        kind = devices[0].split(":")[0]
        return build_engine(path, builder_config(config, kind)), devices
    engine = Engine.load(path)
    return engine, instance_devices(config, engine.device["kind"])


def _close_all(versions, timeout_s: float | None = None) -> None:
    for version in versions:
        version.close(timeout_s)


def _as_serve_error(name: str, exc: Exception) -> ServeError:
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, KilnError):
        return ServeError(f"model {name!r}: {exc.message}", hint=exc.hint)
    return ServeError(f"model {name!r} failed to load: {type(exc).__name__}: {exc}",
                      code="INTERNAL")


def config_from_json(text: str):
    """A load request's `config` parameter (JSON, as Triton takes it) as a ModelConfig."""
    from google.protobuf import json_format

    try:
        return json_format.Parse(text, pb.ModelConfig())
    except json_format.ParseError as exc:
        raise ServeError(f"the load request's config is not a valid model configuration: "
                         f"{exc}") from None
