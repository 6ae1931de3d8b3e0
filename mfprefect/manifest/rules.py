"""The rules a JSON Schema cannot express, for a Pipeline manifest: the step graph (one start, one
end, every edge and step reachable, no cycles but through a switch, joins that close their split
or foreach), parameters, schedule, triggers, and the deployment and runtime settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import cron, yamlsafe
from ..diagnostics import WARNING, Diagnostic, did_you_mean, value_text
from .model import PARAMETER_TYPES, STEP_KINDS


def _mapping(data: Any, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _names(values: Any) -> list[str]:
    return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []


def _edges_of(raw: dict[str, Any]) -> list[tuple[str, tuple[str | int, ...]]]:
    """(target, path-of-the-reference) for every outgoing edge a step declares."""
    out: list[tuple[str, tuple[str | int, ...]]] = []
    nxt = raw.get("next")
    if isinstance(nxt, list):
        out += [(t, ("next", i)) for i, t in enumerate(nxt) if isinstance(t, str)]
    cases = raw.get("cases")
    if raw.get("kind") == "switch" and isinstance(cases, dict):
        out += [(t, ("cases", k)) for k, t in cases.items() if isinstance(t, str)]
    return out


class _Hints:
    """ "Did you mean" suggestions, rationed: each one scans every name, so a file with thousands
    of dangling references must not cost thousands of scans."""

    def __init__(self, budget: int = 50) -> None:
        self.budget = budget

    def suggest(self, word: str, candidates: Any) -> str:
        if self.budget <= 0:
            return ""
        self.budget -= 1
        return did_you_mean(word, candidates)


def rule_diagnostics(doc: yamlsafe.Document) -> list[Diagnostic]:
    """Diagnostics for what a Pipeline manifest must satisfy beyond its JSON Schema."""
    data = doc.data
    out: list[Diagnostic] = []
    hints = _Hints()
    out += _graph_rules(doc, _mapping(data, "steps"), hints)
    out += _parameter_rules(doc, _mapping(data, "parameters"))
    out += _schedule_rules(doc, data.get("schedule"))
    out += _trigger_rules(doc, data.get("triggers"), _mapping(data, "parameters"), hints)
    out += _tag_rules(doc, _mapping(data, "deployment").get("tags"))
    out += _job_variable_rules(doc, _mapping(data, "deployment").get("job_variables"))
    out += _runtime_rules(doc, _mapping(data, "runtime"))
    out += _environment_rules(doc, _mapping(data, "runtime"))
    out += _executor_rules(doc, _mapping(data, "deployment"), _mapping(data, "runtime"))
    out += _unmanaged_rules(doc, _mapping(data, "deployment").get("unmanaged"), data)
    return out


def _unmanaged_rules(
    doc: yamlsafe.Document, unmanaged: Any, data: dict[str, Any]
) -> list[Diagnostic]:
    """`schedule.active` left to the UI means nothing without a schedule: say so, once."""
    names = _names(unmanaged)
    if "schedule.active" not in names or data.get("schedule") is not None:
        return []
    return [
        doc.diagnostic(
            ("deployment", "unmanaged", unmanaged.index("schedule.active")),
            "deployment.unmanaged",
            "`schedule.active` is left to the UI, but the manifest has no schedule",
            severity=WARNING,
        )
    ]


def _executor_rules(
    doc: yamlsafe.Document, deployment: dict[str, Any], runtime: dict[str, Any]
) -> list[Diagnostic]:
    """A cluster's workers start steps from the code package and share the run's data."""
    executor = deployment.get("executor")
    if not isinstance(executor, dict) or executor.get("kind") != "dask":
        return []
    out = []
    code = deployment.get("code")
    kind = code.get("kind") if isinstance(code, dict) else "package"
    if kind != "package":
        out.append(
            doc.diagnostic(
                ("deployment", "code", "kind"),
                "executor.code",
                f"the dask executor starts each step from the run's code package, not from "
                f"`{kind}`; use `kind: package` (or remove deployment.code)",
            )
        )
    if runtime.get("environment") == "uv":
        out.append(
            doc.diagnostic(
                ("runtime", "environment"),
                "executor.environment",
                "the dask executor does not build locked environments (uv) on its workers yet; "
                "use the local executor, or install the flow's packages on the Dask workers",
            )
        )
    if runtime.get("datastore") not in REMOTE_DATASTORES:
        out.append(
            doc.diagnostic(
                ("runtime", "datastore"),
                "executor.datastore",
                f"the dask executor's workers share the run's data through the datastore, and "
                f"`{runtime.get('datastore')}` is one machine's; use s3, azure or gs",
            )
        )
    return out


# Job-variable `env` names mfprefect sets itself on every deployment (see deploy.desired).
RESERVED_ENV_PREFIXES = ("MFPREFECT_", "METAFLOW_CODE_")
REMOTE_DATASTORES = ("s3", "azure", "gs")


def _job_variable_rules(doc: yamlsafe.Document, job_variables: Any) -> list[Diagnostic]:
    if not isinstance(job_variables, dict):
        return []
    env = job_variables.get("env")
    if env is None:
        return []
    where = ("deployment", "job_variables", "env")
    if not isinstance(env, dict):
        return [
            doc.diagnostic(
                where, "deployment.job-env", "must be a mapping of variable names to strings"
            )
        ]
    out = []
    for name, value in list(env.items())[:1000]:
        if str(name).startswith(RESERVED_ENV_PREFIXES):
            out.append(
                doc.diagnostic(
                    (*where, name),
                    "deployment.reserved",
                    f"`{name}` is set by mfprefect itself on every deployment; choose another name",
                )
            )
        elif not isinstance(value, str):
            out.append(
                doc.diagnostic(
                    (*where, name),
                    "deployment.job-env",
                    f"expected a string, got {value_text(value)} (quote it)",
                )
            )
    return out


def _environment_rules(doc: yamlsafe.Document, runtime: dict[str, Any]) -> list[Diagnostic]:
    kind = runtime.get("environment")
    if kind not in ("conda", "pypi"):
        return []
    return [
        doc.diagnostic(
            ("runtime", "environment"),
            "runtime.environment",
            f"`{kind}` environments are not built by mfprefect; lock the flow's packages with uv "
            "(pyproject.toml and uv.lock) and use `uv`",
        )
    ]


def runtime_warnings(data: dict[str, Any]) -> list[str]:
    """What export says about the runtime settings it wrote (validate reports them with places)."""
    doc = yamlsafe.Document(data=data, file="<manifest>")
    return [f"{d.path}: {d.message}" for d in _runtime_rules(doc, _mapping(data, "runtime"))]


def _runtime_rules(doc: yamlsafe.Document, runtime: dict[str, Any]) -> list[Diagnostic]:
    if runtime.get("datastore") in REMOTE_DATASTORES and runtime.get("metadata") == "local":
        return [
            doc.diagnostic(
                ("runtime", "metadata"),
                "runtime.local-metadata",
                f"a remote datastore ({runtime['datastore']}) with local metadata: a run on a "
                "worker is recorded only on that worker, so Metaflow's client elsewhere cannot "
                "find it; use `metadata: service` (METAFLOW_SERVICE_URL on every worker)",
                severity=WARNING,
            )
        ]
    return []


def _tag_rules(doc: yamlsafe.Document, tags: Any) -> list[Diagnostic]:
    # Checked here rather than with the schema's uniqueItems, which compares every pair.
    if not isinstance(tags, list):
        return []
    out: list[Diagnostic] = []
    first: dict[str, int] = {}
    for i, tag in enumerate(tags[:1000]):
        if isinstance(tag, str) and tag in first:
            message = f"tag `{tag}` is already listed at tags[{first[tag]}]"
            out.append(doc.diagnostic(("deployment", "tags", i), "deployment.tags", message))
        elif isinstance(tag, str):
            first[tag] = i
    return out


_KIND_FIELDS = {
    "linear": {"next"},
    "join": {"next"},
    "split": {"next"},
    "foreach": {"next", "foreach"},
    "switch": {"condition", "cases"},
    "end": set(),
}


def _graph_rules(doc: yamlsafe.Document, steps: dict[str, Any], hints: _Hints) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    well_formed = {
        n: s for n, s in steps.items() if isinstance(s, dict) and s.get("kind") in STEP_KINDS
    }
    if not steps:
        return out
    names = list(steps)

    # Per-kind shape: which fields a kind needs and which it must not have.
    for name, raw in well_formed.items():
        kind = raw["kind"]
        here = ("steps", name)
        needed = _KIND_FIELDS[kind]
        for key in sorted(needed - set(raw)):
            out.append(
                doc.diagnostic(here, "graph.kind", f"a `{kind}` step needs `{key}`", key=True)
            )
        for key in ("next", "foreach", "condition", "cases"):
            if key in raw and key not in needed:
                why = (
                    "the end step has no successor"
                    if kind == "end"
                    else f"`{key}` does not apply to a `{kind}` step"
                )
                out.append(doc.diagnostic(here + (key,), "graph.kind", why, key=True))
        nxt = _names(raw.get("next"))
        # A `next` that is not a list is the schema's finding; counting it here would add a
        # second, wrong one ("got 0").
        listed = isinstance(raw.get("next"), list)
        if kind in ("linear", "join", "foreach") and listed and len(nxt) != 1:
            out.append(
                doc.diagnostic(
                    here + ("next",),
                    "graph.kind",
                    f"a `{kind}` step has exactly one `next`, got {len(nxt)}",
                )
            )
        if kind == "split" and listed and len(nxt) < 2:
            out.append(
                doc.diagnostic(
                    here + ("next",),
                    "graph.kind",
                    f"a split has at least two branches, got {len(nxt)}",
                )
            )
        if len(set(nxt)) != len(nxt):
            out.append(
                doc.diagnostic(here + ("next",), "graph.kind", "a step appears twice in `next`")
            )
        if kind == "switch" and isinstance(raw.get("cases"), dict) and len(raw["cases"]) < 2:
            out.append(
                doc.diagnostic(
                    here + ("cases",),
                    "graph.switch",
                    f"a switch needs at least two cases, got {len(raw['cases'])}",
                )
            )

    # Every edge points at a step.
    successors: dict[str, list[str]] = {}
    for name, raw in well_formed.items():
        targets = []
        for target, ref in _edges_of(raw):
            if target in steps:
                targets.append(target)
            else:
                out.append(
                    doc.diagnostic(
                        ("steps", name) + ref,
                        "graph.next",
                        f"no step named `{target}`{hints.suggest(target, names)}",
                    )
                )
        successors[name] = list(dict.fromkeys(targets))
    for name in steps:
        successors.setdefault(name, [])

    ends = [n for n, s in well_formed.items() if s["kind"] == "end"]
    if not ends and len(well_formed) == len(steps):
        out.append(
            doc.diagnostic(
                ("steps",),
                "graph.end",
                "no step has `kind: end`; a pipeline ends in exactly one end step",
            )
        )
    for extra in ends[1:]:
        out.append(
            doc.diagnostic(
                ("steps", extra, "kind"),
                "graph.end",
                f"a second end step (the first is `{ends[0]}`)",
            )
        )

    incoming = {t for n, ts in successors.items() for t in ts if t != n}
    roots = [n for n in names if n not in incoming]
    if not roots:
        out.append(
            doc.diagnostic(
                ("steps",), "graph.start", "every step has a predecessor, so there is no start step"
            )
        )
        return out
    start = roots[0]
    for other in roots[1:]:
        out.append(
            doc.diagnostic(
                ("steps", other),
                "graph.start",
                f"nothing leads to `{other}`: a pipeline has one start step (`{start}`)",
                key=True,
            )
        )

    # Reachability and cycles, in one depth-first walk from the start.
    back_edges: set[tuple[str, str]] = set()
    seen: set[str] = set()
    on_path: set[str] = set()
    stack: list[tuple[str, Iterator[str]]] = [(start, iter(successors[start]))]
    seen.add(start)
    on_path.add(start)
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.discard(node)
            continue
        if child in on_path:
            back_edges.add((node, child))
            kind = well_formed.get(node, {}).get("kind")
            if kind != "switch":
                out.append(
                    doc.diagnostic(
                        ("steps", node, "next"),
                        "graph.cycle",
                        f"`{node}` → `{child}` closes a cycle; only a switch case may loop back",
                    )
                )
            continue
        if child not in seen:
            seen.add(child)
            on_path.add(child)
            stack.append((child, iter(successors[child])))
    for name in names:
        if name not in seen and name not in roots:
            out.append(
                doc.diagnostic(
                    ("steps", name),
                    "graph.reachable",
                    f"`{name}` cannot be reached from the start step `{start}`",
                    key=True,
                )
            )

    if out or len(well_formed) != len(steps):
        return out  # split/join analysis needs a sound graph
    out += _split_join_rules(doc, well_formed, successors, start, back_edges)
    return out


def _split_join_rules(
    doc: yamlsafe.Document,
    steps: dict[str, dict[str, Any]],
    successors: dict[str, list[str]],
    start: str,
    back_edges: set[tuple[str, str]],
) -> list[Diagnostic]:
    """Every join closes the innermost open split or foreach; nothing is left open at the end."""
    out: list[Diagnostic] = []
    forward = {n: [t for t in ts if (n, t) not in back_edges] for n, ts in successors.items()}
    indegree = {n: 0 for n in steps}
    parents: dict[str, list[str]] = {n: [] for n in steps}
    for n, ts in forward.items():
        for t in ts:
            indegree[t] += 1
            parents[t].append(n)
    order: list[str] = []
    ready = [start]
    remaining = dict(indegree)
    while ready:
        node = ready.pop(0)
        order.append(node)
        for t in forward[node]:
            remaining[t] -= 1
            if remaining[t] == 0:
                ready.append(t)
    below_switch = _below_switch(steps, forward, order)
    context: dict[str, tuple[str, ...]] = {start: ()}
    reported: set[str] = set()
    for node in order:
        kind = steps[node]["kind"]
        if kind == "join":
            tops = {context[p][-1] if context[p] else None for p in parents[node]}
            if None in tops or not tops:
                out.append(
                    doc.diagnostic(
                        ("steps", node, "kind"),
                        "graph.join",
                        f"join `{node}` has no split or foreach to close",
                    )
                )
                context[node] = ()
            elif len(tops) > 1:
                listed = ", ".join(f"`{t}`" for t in sorted(t for t in tops if t))
                out.append(
                    doc.diagnostic(
                        ("steps", node, "kind"),
                        "graph.join",
                        f"join `{node}` merges branches of different splits ({listed})",
                    )
                )
                context[node] = context[parents[node][0]][:-1]
            else:
                opener = tops.pop()
                assert opener is not None
                context[node] = context[parents[node][0]][:-1]
                width = len(forward[opener]) if steps[opener]["kind"] == "split" else 1
                if (
                    steps[opener]["kind"] == "split"
                    and len(parents[node]) != width
                    and not below_switch.get(node)
                ):
                    out.append(
                        doc.diagnostic(
                            ("steps", node, "kind"),
                            "graph.join",
                            f"join `{node}` closes split `{opener}` but receives {len(parents[node])} of its {width} branches",
                        )
                    )
        elif len(parents[node]) > 1 and not below_switch.get(node):
            out.append(
                doc.diagnostic(
                    ("steps", node, "kind"),
                    "graph.join",
                    f"`{node}` has {len(parents[node])} inputs, so it must be a join (`kind: join`)",
                )
            )
        mine = context.get(node, ())
        for child in forward[node]:
            passed = mine + (node,) if kind in ("split", "foreach") else mine
            if steps[child]["kind"] == "join":
                continue  # computed from all its parents when reached
            if child in context and context[child] != passed and child not in reported:
                reported.add(child)
                out.append(
                    doc.diagnostic(
                        ("steps", child),
                        "graph.join",
                        f"`{child}` is reached from inside and outside a split or foreach",
                        key=True,
                    )
                )
            context.setdefault(child, passed)
    for name, raw in steps.items():
        if raw["kind"] == "end" and context.get(name):
            opener = context[name][-1]
            out.append(
                doc.diagnostic(
                    ("steps", opener, "kind"),
                    "graph.join",
                    f"`{opener}` is never closed by a join before the end step `{name}`",
                )
            )
    return out


def _below_switch(
    steps: dict[str, dict[str, Any]], forward: dict[str, list[str]], order: list[str]
) -> dict[str, bool]:
    """Which steps a switch can reach: there, several inputs mean 'one of these branches ran'."""
    reached: dict[str, bool] = {}
    for node in order:
        flag = reached.get(node, False) or steps[node]["kind"] == "switch"
        for child in forward[node]:
            if flag:
                reached[child] = True
    return reached


# The deployed flow's own parameter (runtime.resume.RESUME_PARAMETER): no pipeline may have it.
RESERVED_PARAMETER = "mfprefect_resume"


def _parameter_rules(doc: yamlsafe.Document, parameters: dict[str, Any]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    lowered: dict[str, str] = {}
    for name, raw in parameters.items():
        if not isinstance(raw, dict):
            continue
        key = name.lower().replace("-", "_")
        if key in lowered:
            out.append(
                doc.diagnostic(
                    ("parameters", name),
                    "parameters.name",
                    f"`{name}` clashes with `{lowered[key]}` (Metaflow compares parameter names ignoring case and `-`/`_`)",
                    key=True,
                )
            )
        lowered.setdefault(key, name)
        if key == RESERVED_PARAMETER:
            out.append(
                doc.diagnostic(
                    ("parameters", name),
                    "parameters.reserved",
                    f"`{name}` is the parameter mfprefect's deployed flows take to resume a run; "
                    "choose another name",
                    key=True,
                )
            )
        kind = raw.get("type")
        if "default" not in raw or kind not in PARAMETER_TYPES:
            continue
        default = raw["default"]
        if default is None:
            continue
        ok = {
            "str": isinstance(default, str),
            "int": isinstance(default, int) and not isinstance(default, bool),
            "float": isinstance(default, (int, float)) and not isinstance(default, bool),
            "bool": isinstance(default, bool),
            "json": True,
        }[kind]
        if not ok:
            out.append(
                doc.diagnostic(
                    ("parameters", name, "default"),
                    "parameters.default",
                    f"default {value_text(default)} is not a `{kind}`",
                )
            )
    return out


def _schedule_rules(doc: yamlsafe.Document, schedule: Any) -> list[Diagnostic]:
    if not isinstance(schedule, dict):
        return []
    out: list[Diagnostic] = []
    expr = schedule.get("cron")
    if isinstance(expr, str):
        problem = cron.cron_problem(expr)
        if problem:
            out.append(doc.diagnostic(("schedule", "cron"), "schedule.cron", problem))
    zone = schedule.get("timezone")
    if isinstance(zone, str):
        problem = cron.timezone_problem(zone)
        if problem:
            out.append(doc.diagnostic(("schedule", "timezone"), "schedule.timezone", problem))
    return out


def _trigger_rules(
    doc: yamlsafe.Document, triggers: Any, parameters: dict[str, Any], hints: _Hints
) -> list[Diagnostic]:
    if not isinstance(triggers, list):
        return []
    out: list[Diagnostic] = []
    seen_events: dict[str, int] = {}
    for i, raw in enumerate(triggers):
        if not isinstance(raw, dict):
            continue
        if raw.get("kind") == "event" and isinstance(raw.get("event"), str):
            if raw["event"] in seen_events:
                out.append(
                    doc.diagnostic(
                        ("triggers", i, "event"),
                        "triggers.duplicate",
                        f"event `{raw['event']}` is already listed at triggers[{seen_events[raw['event']]}]",
                    )
                )
            seen_events.setdefault(raw["event"], i)
        mapping = raw.get("parameters")
        if raw.get("kind") != "event" or not isinstance(mapping, dict):
            continue
        for name in mapping:
            if name not in parameters:
                out.append(
                    doc.diagnostic(
                        ("triggers", i, "parameters", name),
                        "triggers.parameter",
                        f"no parameter named `{name}`{hints.suggest(name, parameters)}",
                        key=True,
                    )
                )
    return out
