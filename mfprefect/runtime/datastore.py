"""The Metaflow datastore as the runner sees it: one root, resolved once and given to every step."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # For types only: forked steps and datastore calls import this module, and the manifest
    # package (with its YAML parser) would cost each of them about 20 ms.
    from ..manifest import Manifest


def cards_root(root: str) -> str:
    """Where Metaflow's client looks for the cards of a task whose datastore root is `root`."""
    return root.rstrip("/") + "/mf.cards"


@dataclass
class Datastore:
    """Reads what steps wrote (foreach width, switch choice, artifacts) and saves their logs."""

    flow_name: str
    kind: str
    root: str
    _flow_datastore: Any = None

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> Datastore:
        """Resolve the root as Metaflow would from here (the manifest may name it explicitly)."""
        kind = manifest.runtime.datastore
        root = manifest.runtime.datastore_root
        if root is None:
            from metaflow.plugins import DATASTORES

            impl = next(d for d in DATASTORES if d.TYPE == kind)
            root = impl.get_datastore_root_from_config(
                lambda *_a, **_k: None, create_on_absent=True
            )
        if kind == "local":
            root = os.path.abspath(root)
        return cls(manifest.flow_class, kind, root)

    def __getstate__(self) -> dict[str, Any]:
        """What the datastore has open is this process's: a pickled copy opens its own."""
        return {**self.__dict__, "_flow_datastore": None}

    def _fds(self) -> Any:
        if self._flow_datastore is None:
            from metaflow.datastore import FlowDataStore
            from metaflow.plugins import DATASTORES

            impl = next(d for d in DATASTORES if d.TYPE == self.kind)
            self._flow_datastore = FlowDataStore(
                self.flow_name, storage_impl=impl, ds_root=self.root
            )
        return self._flow_datastore

    def _task(self, pathspec: str, attempt: int) -> Any:
        run_id, step, task_id = pathspec.split("/")[-3:]
        return self._fds().get_task_datastore(
            run_id, step, task_id, attempt=attempt, mode="r", allow_not_done=True
        )

    def read_artifact(self, pathspec: str, attempt: int, name: str) -> Any:
        """One artifact of a task's given attempt (None if it has none by that name)."""
        ds = self._task(pathspec, attempt)
        return ds[name] if name in ds else None

    def task_ok(self, pathspec: str, attempt: int) -> bool:
        """Whether the attempt recorded success (a step may exit 0 without finishing its task)."""
        try:
            return bool(self.read_artifact(pathspec, attempt, "_task_ok"))
        except Exception:  # noqa: BLE001 - no data at all means it did not finish
            return False

    def artifact_names(self, pathspec: str, attempt: int) -> list[str]:
        """The user-visible artifact names of a task attempt."""
        ds = self._task(pathspec, attempt)
        return sorted(
            name
            for name in getattr(ds, "_objects", {})
            if not name.startswith("_") and name != "name"
        )

    def save_logs(
        self, pathspec: str, attempt: int, stdout: Sequence[str], stderr: Sequence[str]
    ) -> None:
        """Keep the step's output in Metaflow's task logs, as Metaflow's own runtime does."""
        from metaflow.mflog import RUNTIME_LOG_SOURCE, mflog

        run_id, step, task_id = pathspec.split("/")[-3:]
        ds = self._fds().get_task_datastore(run_id, step, task_id, attempt=attempt, mode="w")

        def encode(lines: Sequence[str]) -> bytes:
            return b"".join(
                mflog.decorate(RUNTIME_LOG_SOURCE, line.encode("utf-8")) + b"\n" for line in lines
            )

        ds.save_logs(RUNTIME_LOG_SOURCE, {"stdout": encode(stdout), "stderr": encode(stderr)})

    def save_all_logs(self, tasks: Sequence[dict[str, Any]]) -> dict[str, str]:
        """`save_logs` for each {pathspec, attempt, stdout, stderr}; the errors by pathspec."""
        errors = {}
        for task in tasks:
            try:
                self.save_logs(task["pathspec"], task["attempt"], task["stdout"], task["stderr"])
            except OSError as exc:
                errors[task["pathspec"]] = str(exc)
        return errors

    def cards(self, pathspec: str) -> list[dict[str, str | None]]:
        """The task's cards ({type, id, location}), where Metaflow's client finds them: under
        `cards_root` (see `commands.card_variables`)."""
        from metaflow.datastore import FlowDataStore
        from metaflow.plugins import DATASTORES
        from metaflow.plugins.cards.card_datastore import CardDatastore
        from metaflow.plugins.cards.exception import CardNotPresentException

        impl = next(d for d in DATASTORES if d.TYPE == self.kind)
        store = CardDatastore(
            FlowDataStore(self.flow_name, storage_impl=impl, ds_root=cards_root(self.root)),
            pathspec=f"{self.flow_name}/{pathspec}",
        )
        try:
            paths = store.extract_card_paths()
        except CardNotPresentException:
            return []
        found = []
        for path in sorted(paths):
            info = CardDatastore.info_from_path(path)
            found.append(
                {"type": info.type, "id": info.id, "location": store.create_full_path(path)}
            )
        return found

    def inspect(
        self, pathspec: str, attempt: int, read: Sequence[str] = (), names: bool = False
    ) -> TaskRecord:
        """Whether the task finished, the artifacts in `read` and (with `names`) its artifact
        names and cards."""
        ok = self.task_ok(pathspec, attempt)
        values = {name: plain(self.read_artifact(pathspec, attempt, name)) for name in read if ok}
        listed = self.artifact_names(pathspec, attempt) if ok and names else []
        cards = self.cards(pathspec) if ok and names else []
        return TaskRecord(ok, values, listed, cards)

    def origin_tasks(
        self, run_id: str, only_parameters: bool = False
    ) -> tuple[dict[tuple[str, tuple[int, ...], int], str], dict[str, Any]]:
        """What a resume reuses from run `run_id`: its successful tasks, keyed by (step, foreach
        indices, nth time at those indices), and the artifacts of its `_parameters` task (with
        `only_parameters`, those alone: a check that the run is there, reading far less)."""
        steps = ["_parameters"] if only_parameters else None
        done = self._fds().get_task_datastores(
            run_id=run_id, steps=steps, allow_not_done=False, mode="r"
        )
        if not done:
            from ..errors import UsageError

            raise UsageError(
                f"no run {self.flow_name}/{run_id} in the datastore at {self.root}",
                hint="check --clone-run-id, and run from where the original run's datastore is",
            )
        wanted = {
            id(ds): (
                [n for n in ds._objects if not n.startswith("_")]
                if ds.step_name == "_parameters"
                else [n for n in ("_task_ok", "_foreach_stack") if n in ds]
            )
            for ds in done
        }
        values = self._artifacts_of(done, wanted)
        parameters: dict[str, Any] = {}
        grouped: dict[tuple[str, tuple[int, ...]], list[tuple[Any, str]]] = {}
        for ds in done:
            found = values[id(ds)]
            if ds.step_name == "_parameters":
                parameters = found
                continue
            if not found.get("_task_ok"):
                continue
            stack = found.get("_foreach_stack") or []
            indices = tuple(int(frame.index) for frame in stack)
            grouped.setdefault((ds.step_name, indices), []).append(
                (_task_order(ds.task_id), ds.task_id)
            )
        clones: dict[tuple[str, tuple[int, ...], int], str] = {}
        for (step, indices), tasks in grouped.items():
            for nth, (_, task_id) in enumerate(sorted(tasks)):
                clones[(step, indices, nth)] = task_id
        return clones, parameters

    def _artifacts_of(
        self, tasks: Sequence[Any], names: dict[int, list[str]]
    ) -> dict[int, dict[str, Any]]:
        """Artifacts of many task datastores (by `id`), loaded in one batch: read one task at a
        time, each load was its own S3 transfer process, seconds apiece for a wide run."""
        import pickle

        values: dict[int, dict[str, Any]] = {id(ds): {} for ds in tasks}
        by_key: dict[str, list[tuple[int, str]]] = {}
        for ds in tasks:
            for name in names[id(ds)]:
                if "pickle" in ds._info.get(name, {}).get("encoding", "gzip+pickle-v2"):
                    by_key.setdefault(ds._objects[name], []).append((id(ds), name))
                else:  # another serializer: let the task datastore decode it
                    values[id(ds)][name] = ds[name]
        for key, blob in self._fds().ca_store.load_blobs(list(by_key)):
            for task, name in by_key[key]:
                values[task][name] = pickle.loads(blob)
        return values


@dataclass
class TaskRecord:
    """What the runner learns from a finished task (see `Datastore.inspect`)."""

    ok: bool
    values: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    cards: list[dict[str, str | None]] = field(default_factory=list)


def plain(value: Any) -> Any:
    """An artifact value as JSON data (tuples as lists; anything else unusual as text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    return str(value)


def call(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """`Datastore.inspect`, or `save_logs` of several tasks, as a call from another process:
    plain data in and out. Step output arrives in a file (it can be large), removed here."""
    args = dict(args)
    store = Datastore(args.pop("flow_name"), args.pop("kind"), args.pop("root"))
    if op == "inspect":
        return asdict(store.inspect(**args))
    lines_file = args.pop("lines_file")
    with open(lines_file, encoding="utf-8") as handle:
        tasks = json.load(handle)
    os.unlink(lines_file)
    if op != "save_logs":
        raise ValueError(f"unknown datastore call {op!r}")
    return {"errors": store.save_all_logs(tasks)}


def _task_order(task_id: str) -> tuple[int, str]:
    """Launch order of a task id: ours are `t<n>`, Metaflow's own runtime uses plain integers."""
    digits = task_id.lstrip("t")
    return (int(digits), task_id) if digits.isdigit() else (1 << 62, task_id)
