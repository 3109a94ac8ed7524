"""Model control: which versions of which models the embedded server serves, changed while it serves.

Triton's model management, with its names and answers:
  - `version_policy` in config.pbtxt picks the served versions: latest N (default: latest 1),
    specific [..], or all; a request without a version goes to the newest READY one.
  - mode "none": every model is loaded at start and never changes; "poll": the repository is
    re-read every `poll_secs` and new, changed or removed versions (and models) follow it;
    "explicit": only `load_models` at start, then POST /v2/repository/models/{name}/load|unload.
A version is loaded and warmed up off the event loop, then swapped in by replacing the
model's table of ready versions (one assignment on the event loop, so a request sees the old
table or the new one). Requests pick their version and join its batch queue without yielding
to the event loop, so a version taken out of the table never gets a request after its batcher
starts closing: its queued and running requests finish (the batcher drains), then it is freed.
A version that fails (files, config, warm-up) is refused: the index shows it UNAVAILABLE with
the reason, the log says why, and the versions already served keep serving; it is retried
only once its files change. A model that fails at start leaves the others serving unless
`exit_on_error` asks to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from qdeploy.errors import QDeployError
from qdeploy.serving.models import ServedModel, ServeOptions, load_version
from qdeploy.serving.protocol import RequestError
from qdeploy.serving.repository import (CONFIG_FILE, RepositoryModel, check_config, check_model_name, model_folders,
                                        model_config_pb2, read_model_config, version_model_path, version_numbers)

log = logging.getLogger(__name__)

MODES = ("none", "poll", "explicit")
READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
UNLOADED = "unloaded"  # Triton's reason for a version taken out by an unload request
# Config fields and parameters that name files: an override may only repeat config.pbtxt's values.
_FILE_FIELDS = ("default_model_filename",)
_FILE_PARAMETERS = ("model_file", "plugin_libs")


@dataclass(frozen=True)
class ControlOptions:
    """Triton's model-control flags: --model-control-mode, --repository-poll-secs, --load-model, --exit-on-error."""

    mode: str = "none"
    poll_secs: int = 15  # Triton's default --repository-poll-secs
    load_models: tuple[str, ...] = ()  # explicit mode: loaded at start; ("*",) loads every model
    exit_on_error: bool = False  # a model that fails at start stops the start (else the others serve)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise QDeployError(f"unknown model control mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.poll_secs < 1:
            raise QDeployError(f"repository poll interval must be >= 1 s, got {self.poll_secs}")
        if self.load_models and self.mode != "explicit":
            raise QDeployError("--load-model takes effect only with --model-control-mode explicit")
        if "*" in self.load_models and len(self.load_models) > 1:
            raise QDeployError("--load-model '*' loads every model; give it alone, not with other names")
        for name in self.load_models:
            if name != "*":
                check_model_name(name)


def select_versions(config: Any | None, available: Sequence[int]) -> list[int]:
    """The versions a config's version_policy serves among those present, newest first (Triton's rules)."""
    newest_first = sorted(available, reverse=True)
    policy = config.version_policy if config is not None else None
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    if choice == "all":
        return newest_first
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in newest_first if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return newest_first[:max(count, 1)]


def parse_config_override(text: Any, name: str, on_disk: Any | None) -> Any:
    """A load request's `config` parameter: a JSON ModelConfig, checked like config.pbtxt.

    It may not name other files than config.pbtxt does (default_model_filename, the
    Python backend's model_file/plugin_libs): a load request serves the repository's files only.
    """
    from google.protobuf import json_format

    if not isinstance(text, str):
        raise RequestError("the 'config' parameter must be a string holding a JSON model config")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"the 'config' parameter is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise RequestError("the 'config' parameter must be a JSON object (a Triton model config)")
    try:
        config = json_format.ParseDict(document, model_config_pb2().ModelConfig())
        check_config(config, name, "the 'config' parameter")
    except (json_format.ParseError, QDeployError) as exc:
        raise RequestError(f"config override refused: {str(exc).splitlines()[0]}") from exc
    for field_name in _FILE_FIELDS:
        if getattr(config, field_name) != (getattr(on_disk, field_name) if on_disk is not None else ""):
            raise RequestError(f"config override refused: {field_name} names a file; a load request may not "
                               f"change which files are served (edit {name}/{CONFIG_FILE} instead)")
    for key in _FILE_PARAMETERS:
        given = config.parameters[key].string_value if key in config.parameters else None
        kept = on_disk.parameters[key].string_value if on_disk is not None and key in on_disk.parameters else None
        if given != kept:
            raise RequestError(f"config override refused: parameter {key!r} names a file; a load request may not "
                               f"change which files are served (edit {name}/{CONFIG_FILE} instead)")
    return config


def one_line(exc: Exception) -> str:
    """An error as one line for the index and a 4xx answer (engines' messages may end in newlines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _fingerprint(folder: Path) -> tuple:
    """What a version folder holds (paths, sizes, modification times): a change means a reload."""
    files = []
    for path in sorted(folder.rglob("*")):
        with contextlib.suppress(OSError):
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(files)


@dataclass
class VersionState:
    """One version's entry in the repository index."""

    state: str
    reason: str = ""
    fingerprint: tuple | None = None  # files and config last tried: a failed version is retried once they change


@dataclass
class ModelState:
    """One model: its ready versions (swapped as a whole) and every version's state."""

    name: str
    ready: dict[int, ServedModel] = field(default_factory=dict)
    versions: dict[int, VersionState] = field(default_factory=dict)
    failure: str = ""  # why the folder itself cannot be read (config.pbtxt, no version), while it cannot

    def newest_ready(self) -> ServedModel | None:
        return self.ready[max(self.ready)] if self.ready else None


@dataclass
class _Plan:
    """What one model's folder asks for: its config, the versions to serve, and their files."""

    config: Any | None
    wanted: dict[int, Path | QDeployError]  # version -> model file, or why it has none
    fingerprints: dict[int, tuple]  # version -> (its files, the config text): what a load of it would read


def _plan(folder: Path, override: Any | None = None) -> _Plan:
    """Read a model folder (blocking file IO: runs in a worker thread)."""
    from google.protobuf import text_format

    config = override if override is not None else read_model_config(folder)
    versions = select_versions(config, version_numbers(folder))
    if not versions:
        raise QDeployError(f"model {folder.name!r} has no version folder its version policy serves; "
                           "write one with `qdeploy triton-repo`")
    wanted: dict[int, Path | QDeployError] = {}
    for version in versions:
        try:
            wanted[version] = version_model_path(folder, version, config)
        except QDeployError as exc:
            wanted[version] = exc
    config_text = text_format.MessageToString(config) if config is not None else ""
    return _Plan(config, wanted, {v: (_fingerprint(folder / str(v)), config_text) for v in versions})


class ModelControl:
    """The served models of one embedded server, and the changes model control makes to them."""

    def __init__(self, repo: str | Path | None, options: ServeOptions = ServeOptions(),
                 control: ControlOptions = ControlOptions()) -> None:
        self.repo = Path(repo) if repo is not None else None
        self.options = options
        self.control = control
        self.models: dict[str, ModelState] = {}
        self.on_ready: Callable[[ServedModel], None] | None = None  # the API wires metrics to each new version
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task | None = None
        self._draining: set[asyncio.Task] = set()

    @classmethod
    def fixed(cls, models: Sequence[ServedModel]) -> ModelControl:
        """Serve already-loaded models as they are (mode none, no repository)."""
        control = cls(None)
        for model in models:
            state = control.models.setdefault(model.name, ModelState(model.name))
            state.ready[int(model.version)] = model
            state.versions[int(model.version)] = VersionState(READY)
        return control

    # ---- start and stop ------------------------------------------------------------------

    def load_at_start(self) -> list[str]:
        """Load what the mode serves at start (blocking, before the server listens); returns the failures.

        With exit_on_error the first failure raises; otherwise it is logged and left in the index.
        """
        assert self.repo is not None
        folders = {folder.name: folder for folder in model_folders(self.repo)}
        if self.control.mode == "explicit" and self.control.load_models != ("*",):
            unknown = sorted(set(self.control.load_models) - set(folders))
            if unknown:
                raise QDeployError(f"--load-model {unknown[0]!r}: no such model folder in {self.repo} "
                                   f"(it has {sorted(folders)})")
            folders = {name: folders[name] for name in self.control.load_models}
        elif not folders and self.control.mode == "none":
            raise QDeployError(f"model repository {self.repo} holds no models; add one with `qdeploy triton-repo`")
        failures = []
        for name, folder in folders.items():
            state = self.models.setdefault(name, ModelState(name))
            try:
                plan = _plan(folder)
            except QDeployError as exc:
                failures.append(self._refuse_model(state, one_line(exc)))
            else:
                for version, outcome in plan.wanted.items():
                    try:
                        model = self._load(name, version, outcome, plan.config)
                    except Exception as exc:  # any failure of one version is contained to it
                        failures.append(self._refuse(state, version, plan.fingerprints[version], exc))
                        continue
                    state.ready[version] = model
                    state.versions[version] = VersionState(READY, fingerprint=plan.fingerprints[version])
            if failures and self.control.exit_on_error:
                raise QDeployError(f"{failures[0]} (--exit-on-error stops the start; leave it off to serve the others)")
        return failures

    async def start(self) -> None:
        """On the server's event loop: start every ready version's batcher, then the poller."""
        self._lock = asyncio.Lock()
        for state in self.models.values():
            for model in state.ready.values():
                self._start_version(model)
        if self.control.mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop(), name="qdeploy-poll")

    async def close(self) -> None:
        """Stop polling and drain every version (queued and running requests finish)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        closing = [model.batcher.close() for state in self.models.values() for model in state.ready.values()]
        await asyncio.gather(*closing, *self._draining)

    # ---- requests --------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> ServedModel:
        """The version a request names (else the newest READY one); 400/404 with Triton's status and the state."""
        try:
            check_model_name(name)
        except QDeployError as exc:
            raise RequestError(str(exc)) from exc
        state = self.models.get(name)
        if state is None:
            if self.repo is not None and (self.repo / name).is_dir():
                raise RequestError(f"model {name!r} is in the repository but not loaded{self._hint(name)}", 404)
            known = sorted(n for n, s in self.models.items() if s.ready)
            raise RequestError(f"unknown model {name!r}; this server has {known}", 404)
        if version is None:
            model = state.newest_ready()
            if model is None:
                raise RequestError(f"model {name!r} has no READY version ({self._states(state)}){self._hint(name)}",
                                   404)
            return model
        if not version.isdigit() or int(version) not in state.ready:
            served = sorted(state.ready) or "none"
            known = state.versions.get(int(version)) if version.isdigit() else None
            status = f" ({self._describe(int(version), known)})" if known is not None else ""
            raise RequestError(f"model {name!r} has no READY version {version!r}{status}; "
                               f"READY versions: {served}", 404)
        return state.ready[int(version)]

    @staticmethod
    def _describe(version: int, entry: VersionState) -> str:
        return f"version {version} is {entry.state}" + (f": {entry.reason}" if entry.reason else "")

    def _states(self, state: ModelState) -> str:
        described = [self._describe(v, e) for v, e in sorted(state.versions.items())]
        return "; ".join(described + ([f"{UNAVAILABLE}: {state.failure}"] if state.failure else [])) or "none loaded"

    def _hint(self, name: str) -> str:
        return f"; load it with POST /v2/repository/models/{name}/load" if self.control.mode == "explicit" else ""

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model folder, each tried version with its state and reason."""
        names = set(self.models)
        if self.repo is not None:
            with contextlib.suppress(QDeployError, OSError):
                names |= {folder.name for folder in model_folders(self.repo)}
        entries: list[dict[str, str]] = []
        for name in sorted(names):
            state = self.models.get(name)
            if state is None or not (state.versions or state.failure):
                if not ready_only:
                    entries.append({"name": name})  # in the repository, never loaded
                continue
            if state.failure and not ready_only:
                entries.append({"name": name, "state": UNAVAILABLE, "reason": state.failure})
            for version, entry in sorted(state.versions.items()):
                if ready_only and entry.state != READY:
                    continue
                item = {"name": name, "version": str(version), "state": entry.state}
                if entry.reason:
                    item["reason"] = entry.reason
                entries.append(item)
        return entries

    # ---- explicit load / unload ------------------------------------------------------------

    def _folder(self, name: str, action: str) -> Path:
        """The repository folder of a model named in a load/unload request; 400/404 otherwise."""
        if self.control.mode != "explicit":
            raise RequestError(f"explicit model {action} is not allowed in model control mode "  # 503 as Triton
                               f"{self.control.mode!r}; start the server with --model-control-mode explicit", 503)
        try:
            check_model_name(name)
        except QDeployError as exc:
            raise RequestError(str(exc)) from exc
        folder = self.repo / name
        if not folder.is_dir():
            raise RequestError(f"no model {name!r} in the repository {self.repo}; "
                               f"it has {[f.name for f in model_folders(self.repo)]}", 404)
        return folder

    async def load(self, name: str, parameters: dict[str, Any]) -> None:
        """POST .../load: (re)load the versions the policy serves; 400 naming the version that failed.

        Parameters: `config` (a JSON model config replacing config.pbtxt for this load); file
        contents (`file:<path>`) are refused, as any path outside the repository would be.
        """
        folder = self._folder(name, "load")
        files = sorted(key for key in parameters if key.startswith("file:"))
        if files:
            raise RequestError(f"load request carries file content ({files[0]!r}); this server loads only the "
                               f"files already in its repository")
        unknown = sorted(set(parameters) - {"config"})
        if unknown:
            raise RequestError(f"unknown load parameter {unknown[0]!r}; the only one is 'config' (a JSON model config)")
        override = None
        if "config" in parameters:
            on_disk = await asyncio.to_thread(self._config_on_disk, folder)
            override = parse_config_override(parameters["config"], name, on_disk)
        async with self._lock:
            failures = await self._apply(folder, override, force=True)
        if failures:
            raise RequestError(f"load failed for model {name!r}: {failures[0]}")

    @staticmethod
    def _config_on_disk(folder: Path) -> Any | None:
        try:
            return read_model_config(folder)
        except QDeployError as exc:
            raise RequestError(str(exc)) from exc

    async def unload(self, name: str) -> None:
        """POST .../unload: every version leaves the table at once, then drains; the index says 'unloaded'.

        A model in the repository that is not loaded stays so (200, as Triton answers).
        """
        self._folder(name, "unload")
        async with self._lock:
            state = self.models.get(name)
            if state is None or not state.ready:
                return
            leaving, state.ready = state.ready, {}
            for version in leaving:
                state.versions[version] = VersionState(UNLOADING)
            await asyncio.gather(*(model.batcher.close() for model in leaving.values()))
            for version in leaving:
                state.versions[version] = VersionState(UNAVAILABLE, UNLOADED)
            log.info("unloaded model %r versions %s", name, sorted(leaving))

    # ---- polling ---------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.control.poll_secs)
            try:
                await self.poll()
            except Exception:  # a bad poll must not end polling; the next one tries again
                log.exception("repository poll failed")

    async def poll(self) -> None:
        """Follow the repository once: load new or changed versions and models, drain removed ones."""
        async with self._lock:
            try:
                folders = {f.name: f for f in await asyncio.to_thread(model_folders, self.repo)}
            except QDeployError as exc:
                log.warning("repository poll skipped: %s", exc)
                return
            for name, folder in folders.items():
                await self._apply(folder, None, force=False)
            for name in sorted(set(self.models) - set(folders)):
                self._retire(self.models[name], set(self.models[name].ready))

    # ---- loading and swapping --------------------------------------------------------------

    def _load(self, name: str, version: int, outcome: Path | QDeployError, config: Any | None) -> ServedModel:
        """Load one version (blocking); a version folder without a model file fails here."""
        if isinstance(outcome, QDeployError):
            raise outcome
        return load_version(RepositoryModel(name, version, outcome, config), self.options)

    def _refuse(self, state: ModelState, version: int, fingerprint: tuple | None, exc: Exception) -> str:
        reason = one_line(exc)
        if version in state.ready:  # a reload failed: the loaded one keeps serving
            log.warning("model %r version %s: reload refused, the loaded files keep serving: %s",
                        state.name, version, reason)
            state.versions[version].fingerprint = fingerprint
            return f"version {version} could not be reloaded: {reason}"
        state.versions[version] = VersionState(UNAVAILABLE, reason, fingerprint)
        log.warning("model %r version %s refused: %s", state.name, version, reason)
        return f"version {version} is at {UNAVAILABLE} state: {reason}"

    def _refuse_model(self, state: ModelState, reason: str) -> str:
        """The folder itself is unusable (config.pbtxt, no versions): the index shows it; served versions stay."""
        if reason != state.failure:  # logged once, not at every poll
            log.warning("model %r refused%s: %s", state.name,
                        ", its loaded versions keep serving" if state.ready else "", reason)
        state.failure = reason
        return reason

    def _start_version(self, model: ServedModel) -> None:
        model.batcher.start()
        if self.on_ready is not None:
            self.on_ready(model)

    async def _apply(self, folder: Path, override: Any | None, force: bool) -> list[str]:
        """Bring one model in line with its folder; returns the failures (each also in the index and log)."""
        state = self.models.setdefault(folder.name, ModelState(folder.name))
        try:
            plan = await asyncio.to_thread(_plan, folder, override)
        except QDeployError as exc:
            return [self._refuse_model(state, one_line(exc))]
        state.failure = ""
        failures = []
        for version, outcome in plan.wanted.items():
            known = state.versions.get(version)
            unchanged = known is not None and known.fingerprint == plan.fingerprints[version]
            if unchanged and (version in state.ready or not force):
                continue  # serving these files already, or they failed before and have not changed
            if version not in state.ready:
                state.versions[version] = VersionState(LOADING)
            try:
                model = await asyncio.to_thread(self._load, folder.name, version, outcome, plan.config)
            except Exception as exc:  # any failure of one version is contained to it
                failures.append(self._refuse(state, version, plan.fingerprints[version], exc))
                continue
            self._start_version(model)
            replaced = state.ready.get(version)
            state.ready = {**state.ready, version: model}  # the swap: one assignment
            state.versions[version] = VersionState(READY, fingerprint=plan.fingerprints[version])
            log.info("model %r version %s is READY%s", folder.name, version, " (reloaded)" if replaced else "")
            if replaced is not None:
                self._drain(replaced)
        if all(version in state.ready for version in plan.wanted):  # never retire before the successors serve
            self._retire(state, set(state.ready) - set(plan.wanted))
        for version in set(state.versions) - set(plan.wanted) - set(state.ready):
            if state.versions[version].reason != UNLOADED:  # a refusal of files no longer asked for
                del state.versions[version]
        return failures

    def _retire(self, state: ModelState, versions: set[int]) -> None:
        """Take versions out of the table now; they drain in the background; the index says 'unloaded'."""
        if not versions:
            return
        leaving = [state.ready[v] for v in versions]
        state.ready = {v: m for v, m in state.ready.items() if v not in versions}
        for version in versions:
            state.versions[version] = VersionState(UNAVAILABLE, UNLOADED)
        for model in leaving:
            self._drain(model)
        log.info("model %r versions %s unloaded (draining)", state.name, sorted(versions))

    def _drain(self, model: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(model.batcher.close())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
