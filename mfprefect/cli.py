"""The standalone `mfprefect` command. Parses arguments, calls the library, renders, exits.

It imports neither Metaflow nor Prefect at start-up: `validate`, `graph` and `--help` stay fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from .cli_options import executor_options, resume_options, step_to_rerun_option
from .errors import MfprefectError, PlanRejected, UsageError
from .repository import yaml_files_in

ERROR_PREFIX = "mfprefect: error: "


class _Group(click.Group):
    """Turns mfprefect's errors into their exit codes inside click, so every entry point agrees."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MfprefectError as exc:
            report(exc)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mfprefect")
def cli() -> None:
    """Run Metaflow pipelines on Prefect through a reviewable pipeline manifest."""


def manifest_files(paths: tuple[str, ...], allow_empty: bool = False) -> list[tuple[str, str]]:
    """(path to open, name to show) for every manifest named, folders expanded to their YAML files;
    finding none is a usage error unless `allow_empty` (a prune that empties an apply set)."""
    found: list[tuple[str, str]] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += [(child, Path(child).as_posix()) for child in yaml_files_in(given)]
        elif path.exists():
            found.append((given, Path(given).as_posix()))
        else:
            raise UsageError(
                f"no such file or folder: {given}",
                hint="name manifest files or folders that hold them",
            )
    if not found and not allow_empty:
        raise UsageError(
            "no manifests found in " + ", ".join(paths), hint="manifests end in .yaml or .yml"
        )
    return found


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="text for people, json for tools, github for annotations on a pull request.",
)
@click.option(
    "--skip-non-manifests",
    is_flag=True,
    help="Pass over YAML files without a top-level `apiVersion: mfprefect/...` (for pre-commit, "
    "which hands over every changed YAML file).",
)
def validate(paths: tuple[str, ...], fmt: str, skip_non_manifests: bool) -> None:
    """Check manifests offline: schema and graph rules. Exit 0 valid, 1 invalid, 2 usage error."""
    from .diagnostics import ERROR, render
    from .kinds import duplicate_diagnostics
    from .manifest import check_file
    from .repository import is_manifest

    diagnostics, docs = [], []
    files = manifest_files(paths)
    skipped = 0
    if skip_non_manifests:
        manifests = [(path, shown) for path, shown in files if is_manifest(path)]
        skipped, files = len(files) - len(manifests), manifests
    for path, shown in files:
        doc, found = check_file(path, shown)
        diagnostics += found
        if doc is not None and not any(d.severity == ERROR for d in found):
            docs.append(doc)
    diagnostics += duplicate_diagnostics(docs)
    errors = sum(d.severity == ERROR for d in diagnostics)
    if fmt == "json":
        click.echo(render(diagnostics, "json"))
    elif diagnostics:
        click.echo(render(diagnostics, fmt))
    if fmt == "text":
        warnings = len(diagnostics) - errors
        if errors or warnings:
            summary = f"{errors} error(s), {warnings} warning(s) in {len(files)} file(s)"
        elif len(files) == 1:
            summary = f"{files[0][1]}: valid"
        else:
            summary = f"{len(files)} manifests valid"
        if skipped:
            summary += f", {skipped} skipped (not mfprefect manifests)"
        click.echo(summary, err=True)
    sys.exit(1 if errors else 0)


@cli.command()
@click.argument("manifest")
@click.option("--markdown", is_flag=True, help="Wrap the diagram in a ```mermaid fence.")
def graph(manifest: str, markdown: bool) -> None:
    """Print a Mermaid diagram of the manifest's steps."""
    from . import mermaid
    from .manifest import load

    files = manifest_files((manifest,))
    if len(files) != 1:
        raise UsageError("graph takes one manifest file")
    click.echo(mermaid.render(load(*files[0]), markdown=markdown), nl=False)


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("paths", nargs=-1, required=True, metavar="FLOW_FILE | --check PATH...")
@click.option(
    "-o", "--output", default="-", show_default=True, help="Manifest to write, or '-' for stdout."
)
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 if a manifest differs from what export would write. Takes "
    "manifests, flow files (their manifests beside them) and folders (their manifests).",
)
@click.option("--name", default=None, help="Deployment name (default: the pipeline name).")
@click.option("--work-pool", default=None, help="Prefect work pool the deployment runs on.")
@click.option("--work-queue", default=None, help="Prefect work queue within the pool.")
@click.option("--tag", "tags", multiple=True, help="Deployment tag (repeatable).")
@click.option("--workflow-timeout", type=int, default=None, help="Flow-level timeout in seconds.")
@click.option(
    "--with",
    "with_",
    multiple=True,
    help="Metaflow decorator spec added to every step (repeatable).",
)
@click.option("--branch", default=None, help="@project branch.")
@click.option("--production", is_flag=True, help="@project production branch.")
@click.option(
    "--config",
    "configs",
    type=(str, str),
    multiple=True,
    help="NAME PATH: a config file (repeatable).",
)
@click.option(
    "--config-value",
    "config_values",
    type=(str, str),
    multiple=True,
    help="NAME JSON: a config value (repeatable).",
)
@click.option(
    "--environment", default=None, help="Metaflow environment type (local, conda, pypi, uv)."
)
@click.option("--datastore", default=None, help="Metaflow datastore (local, s3, azure, gs).")
@click.option("--datastore-root", default=None, help="Metaflow datastore root.")
@click.option("--metadata", default=None, help="Metaflow metadata provider (local, service).")
def export(paths: tuple[str, ...], output: str, check: bool, **given: Any) -> None:
    """Export FLOW_FILE's pipeline manifest (same as `python FLOW_FILE prefect export`).

    With --check and no --output, check every manifest the PATHs name instead (a manifest, the
    manifests beside a flow file that name it, the manifests in a folder): exit 1 if any of them
    differs from what exporting its flow gives now.
    """
    if check and output == "-":
        sys.exit(check_exports(paths, given))
    if len(paths) != 1:
        raise UsageError(
            f"export takes one flow file, not {len(paths)}",
            hint="to check several manifests: mfprefect export --check PATH...",
        )
    flow_file = paths[0]
    if not Path(flow_file).is_file():
        raise UsageError(f"no such flow file: {flow_file}")
    code = subprocess.call(_export_command(flow_file, output, given, check=check))
    sys.exit(code if code in (0, 1, 2) else 1)


def _export_command(flow: str, target: str, given: dict[str, Any], *, check: bool) -> list[str]:
    """The flow's own `prefect export` command. The flow path goes to Python as given, so
    Metaflow's messages (and ours) name it so; a check skips pylint, which says nothing about
    whether the manifest is current and is slow."""
    command = [sys.executable, flow, "--quiet", *(["--no-pylint"] if check else [])]
    command += [*metaflow_top_level_args(given), "prefect", "export", target]
    return command + (["--check"] if check else []) + export_args(given)


def check_exports(paths: tuple[str, ...], given: dict[str, Any]) -> int:
    """`export --check PATH...`: compare each manifest with a fresh export of its flow."""
    from .repository import NotCheckable, export_checks

    try:
        selection = export_checks(paths)
    except NotCheckable as exc:
        raise UsageError(
            str(exc), hint="name flow files (.py), manifests (.yaml) or folders"
        ) from None
    for problem in selection.problems:
        click.echo(f"{ERROR_PREFIX}{problem}", err=True)
    stale = 0
    worst = 1 if selection.problems else 0
    for pair in selection.checks:
        code = subprocess.call(_export_command(pair.flow, pair.manifest, given, check=True))
        if code != 0:
            stale += 1
            worst = max(worst, code if code in (1, 2) else 1)
    checked = len(selection.checks)
    if checked:
        summary = f"{checked - stale} of {checked} manifest(s) up to date"
    else:
        summary = "no manifests to check"
    if selection.skipped:
        summary += (
            f", {len(selection.skipped)} file(s) skipped (not manifests, or no manifest names them)"
        )
    click.echo(summary, err=True)
    return worst


def load_for_run(manifest: str, executor: str | None, address: str | None) -> Any:
    from .cli_options import chosen_executor
    from .manifest import load

    return chosen_executor(load(*manifest_files((manifest,))[0]), executor, address)


@cli.command(name="run")
@click.argument("manifest")
@click.option(
    "--param", "params", multiple=True, metavar="NAME=VALUE", help="A parameter value (repeatable)."
)
@click.option("--tag", "tags", multiple=True, help="A Metaflow tag for the run (repeatable).")
@executor_options(click)
def run_command(
    manifest: str,
    params: tuple[str, ...],
    tags: tuple[str, ...],
    executor: str | None,
    address: str | None,
) -> None:
    """Run the manifest's pipeline now, as one Prefect flow run (no server to set up)."""
    from .runtime.commands import parse_assignments
    from .runtime.local import completed, run_locally

    loaded = load_for_run(manifest, executor, address)
    values = parse_assignments(loaded, params)
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    summary = run_locally(loaded, values, echo=echo, tags=tags, error_prefix=ERROR_PREFIX)
    click.echo(completed(summary.pathspec), err=True)


@cli.command(name="resume")
@click.argument("manifest")
@click.option(
    "--clone-run-id",
    required=True,
    help="The Metaflow run id to resume (its successful tasks are reused).",
)
@click.option("--tag", "tags", multiple=True, help="A Metaflow tag for the new run (repeatable).")
@step_to_rerun_option(click)
@executor_options(click)
def resume_command(
    manifest: str,
    clone_run_id: str,
    tags: tuple[str, ...],
    step_to_rerun: str | None,
    executor: str | None,
    address: str | None,
) -> None:
    """Re-run what failed in an earlier run, reusing every task that succeeded."""
    from .runtime.local import completed, run_locally

    loaded = load_for_run(manifest, executor, address)
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    summary = run_locally(
        loaded,
        {},
        echo=echo,
        tags=tags,
        clone_run_id=clone_run_id,
        step_to_rerun=step_to_rerun,
        error_prefix=ERROR_PREFIX,
    )
    click.echo(completed(summary.pathspec), err=True)


@cli.command(name="compile")
@click.argument("manifest")
@click.argument("output")
def compile_command(manifest: str, output: str) -> None:
    """Write OUTPUT, a Python file that runs the pipeline: `python OUTPUT --PARAM VALUE`."""
    from .compile import render
    from .errors import ManifestError
    from .manifest import check_file

    path, shown = manifest_files((manifest,))[0]
    doc, diagnostics = check_file(path, shown)
    errors = [d for d in diagnostics if d.severity == "error"]
    if doc is None or errors:
        raise ManifestError(f"{shown}: {len(errors)} problem(s) in the manifest", errors)
    write_text(output, render(doc.data, path, output))
    click.echo(f"{output}: written", err=True)


def write_text(path: str, text: str) -> None:
    """Write a file whole or not at all (temporary file, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def _server_url() -> str:
    """The server GitOps commands talk to: PREFECT_API_URL, or the active Prefect profile's."""
    from .runtime.local import profile_api_url

    url = os.environ.get("PREFECT_API_URL") or profile_api_url()
    if not url:
        raise UsageError(
            "no Prefect server named: set PREFECT_API_URL",
            hint="e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    os.environ["PREFECT_API_URL"] = url
    return url


def desired_objects(
    paths: tuple[str, ...], allow_empty: bool = False
) -> tuple[list[Any], list[Any]]:
    """Every manifest named (folders expanded), validated: the deployments pipelines should
    become, and the work pools, limits and variables the other manifests declare."""
    from .deploy.desired import deployment_for
    from .errors import ManifestError
    from .kinds import PIPELINE, duplicate_diagnostics, kind_of, resource_from_data
    from .manifest import check_file, from_data

    specs, resources, docs = [], [], []
    problems = []
    for path, shown in manifest_files(paths, allow_empty):
        doc, diagnostics = check_file(path, shown)
        errors = [d for d in diagnostics if d.severity == "error"]
        if doc is None or errors:
            problems += errors
            continue
        docs.append(doc)
        if kind_of(doc.data) == PIPELINE:
            specs.append(deployment_for(from_data(doc.data, path), doc.data))
        else:
            resources.append(resource_from_data(doc.data, shown))
    problems += duplicate_diagnostics(docs)
    if problems:
        raise ManifestError(
            f"{len(problems)} problem(s) in the manifests; nothing was applied", problems
        )
    return specs, resources


def _gitops(
    paths: tuple[str, ...],
    *,
    apply: bool,
    prune: bool,
    adopt: bool,
    fmt: str,
    allow_empty: bool,
    set_name: str | None,
    out: str | None = None,
) -> None:
    from .deploy import apply as applier
    from .deploy import saved, sets

    chosen = None
    if apply and len(paths) == 1 and paths[0].endswith(".json"):
        chosen = saved.read(paths[0])
        if prune or adopt or allow_empty or set_name is not None:
            raise UsageError(
                "a saved plan carries its own --set, --prune and --adopt",
                hint=f"run `mfprefect apply {paths[0]}` alone, or plan again with other options",
            )
        paths, prune, adopt, apply_set = chosen.paths, chosen.prune, chosen.adopt, chosen.apply_set
        allow_empty = True
        try:
            files = manifest_files(paths, allow_empty=True)
        except UsageError as exc:
            raise PlanRejected(
                f"the manifests changed since the plan was made: {exc.message}"
            ) from None
        chosen.check_inputs(saved.manifest_digests(files), saved.server_digest(_server_url()))
    else:
        apply_set = sets.resolve(set_name, paths)
    specs, resources = desired_objects(paths, allow_empty=prune and allow_empty)
    url = _server_url()
    if prune:
        sets.required(apply_set, "--prune")
    if prune and not specs and not resources and not allow_empty:
        raise UsageError(
            f"--prune with no manifests would delete everything apply set `{apply_set}` holds",
            hint="pass --allow-empty if you mean it",
        )
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    result = applier.run(
        specs,
        prune=prune,
        adopt=adopt,
        apply_set=apply_set,
        dry_run=not apply,
        echo=echo,
        expect=chosen.check_plan if chosen is not None else None,
        resources=resources,
    )
    if out is not None:
        plan_file = saved.SavedPlan(
            paths=paths,
            manifests=saved.manifest_digests(manifest_files(paths, allow_empty=True)),
            server=saved.server_digest(url),
            apply_set=apply_set,
            prune=prune,
            adopt=adopt,
            observed=result.observed,
            plan=result.as_json(),
        )
        write_text(out, saved.text(plan_file))
        echo(f"plan saved to {out}: `mfprefect apply {out}` applies exactly it")
    _render_plan(result, fmt, apply_set)
    if not apply:
        sys.exit(1 if result.pending or result.conflicts else 0)


def _render_plan(result: Any, fmt: str, apply_set: str | None) -> None:
    from .deploy import plan_report

    if fmt == "json":
        import json

        click.echo(json.dumps(result.as_json(), indent=2, default=str))
    elif fmt == "markdown":
        click.echo(plan_report.markdown(result, apply_set), nl=False)
    elif fmt == "github":
        click.echo(plan_report.github(result))
    else:
        click.echo(result.text())


_PATHS = click.argument("paths", nargs=-1, required=True)
_FORMAT = click.option(
    "--format",
    "--output",
    "fmt",
    type=click.Choice(["text", "json", "markdown", "github"]),
    default="text",
    show_default=True,
    help="text for people, json for tools, markdown for a pull-request comment, github for "
    "annotations (--output is the old name).",
)
_PRUNE = click.option(
    "--prune",
    is_flag=True,
    help="Also delete the apply set's mfprefect-owned deployments absent from the manifests.",
)
_ADOPT = click.option(
    "--adopt",
    is_flag=True,
    help="Take over deployments of the same name that mfprefect does not own.",
)
_SET = click.option(
    "--set",
    "set_name",
    default=None,
    metavar="NAME",
    help="The apply set (default: $MFPREFECT_SET, else .mfprefect-set beside the manifests).",
)


@cli.command(name="plan")
@_PATHS
@_FORMAT
@_PRUNE
@_ADOPT
@_SET
@click.option(
    "--out", default=None, metavar="FILE", help="Save the plan; `apply FILE` applies exactly it."
)
def plan_command(
    paths: tuple[str, ...],
    fmt: str,
    prune: bool,
    adopt: bool,
    set_name: str | None,
    out: str | None,
) -> None:
    """Show what apply would change on the server. Exit 0 no changes, 1 changes pending."""
    _gitops(
        paths,
        apply=False,
        prune=prune,
        adopt=adopt,
        fmt=fmt,
        allow_empty=True,
        set_name=set_name,
        out=out,
    )


@cli.command(name="apply")
@_PATHS
@_FORMAT
@_PRUNE
@_ADOPT
@_SET
@click.option("--allow-empty", is_flag=True, help="Let --prune delete everything in the set.")
@click.option("--dry-run", is_flag=True, help="Same as plan: change nothing.")
def apply_command(
    paths: tuple[str, ...],
    fmt: str,
    prune: bool,
    adopt: bool,
    set_name: str | None,
    allow_empty: bool,
    dry_run: bool,
) -> None:
    """Make the server match the manifests (files or folders), or apply a saved plan (FILE.json).
    A second apply changes nothing."""
    _gitops(
        paths,
        apply=not dry_run,
        prune=prune,
        adopt=adopt,
        fmt=fmt,
        allow_empty=allow_empty,
        set_name=set_name,
    )


@cli.command(name="delete")
@click.argument("paths", nargs=-1)
@_SET
def delete_command(paths: tuple[str, ...], set_name: str | None) -> None:
    """Remove the deployments (and their automations) these manifests created; with --set and no
    manifests, everything that apply set holds."""
    from .deploy import apply as applier
    from .deploy import sets

    if paths:
        # Named manifests: their deployments, and only the given set's when --set says so.
        apply_set = sets.checked_name(set_name, "--set") if set_name is not None else None
    elif (apply_set := sets.resolve(set_name, ())) is None:
        raise UsageError(
            "delete needs manifests, or --set NAME to delete a whole apply set",
            hint="e.g. mfprefect delete manifests/  or  mfprefect delete --set team-prod",
        )
    specs, resources = desired_objects(paths) if paths else ([], [])
    _server_url()
    removed = applier.delete(
        specs,
        echo=lambda line: click.echo(line, err=True),
        apply_set=apply_set,
        resources=resources,
    )
    click.echo(f"deleted {len(removed)} object(s)" + ("".join(f"\n  {key}" for key in removed)))


@cli.command(name="trigger")
@click.argument("pipeline")
@click.option(
    "--name", "deployment_name", default=None, help="Deployment name (default: the pipeline name)."
)
@click.option(
    "--param", "params", multiple=True, metavar="NAME=VALUE", help="A parameter value (repeatable)."
)
@resume_options(click)
def trigger_command(
    pipeline: str,
    deployment_name: str | None,
    params: tuple[str, ...],
    origin_run_id: str | None,
    step_to_rerun: str | None,
) -> None:
    """Start a run of a deployed pipeline (or resume one); print the Prefect flow run id."""
    from .deploy import trigger
    from .runtime.commands import parse_pairs

    _server_url()
    target = pipeline if "/" in pipeline else f"{pipeline}/{deployment_name or pipeline}"
    pairs = parse_pairs(params, "--param")
    if origin_run_id:
        click.echo(trigger.resume(target, origin_run_id, step_to_rerun, pairs))
    elif step_to_rerun:
        raise UsageError("--step is for --resume", hint="name the run to resume: --resume RUN_ID")
    else:
        click.echo(trigger.trigger_with_strings(target, pairs))


@cli.group(name="server")
def server_group() -> None:
    """The local Prefect server (with its UI) that runs start when no PREFECT_API_URL is set."""


@server_group.command(name="start")
def server_start() -> None:
    """Start the local server unless it runs; print its API URL."""
    from .runtime import local_server

    click.echo(local_server.ensure_server(lambda line: click.echo(line, err=True)))


@server_group.command(name="status")
def server_status_command() -> None:
    """Print the running local server as JSON (exit 1: none is running)."""
    import json

    from .runtime import local_server

    status = local_server.server_status()
    if status is None:
        click.echo("no local server is running", err=True)
        sys.exit(1)
    click.echo(json.dumps({**status, "ui": local_server.ui_url(status["url"])}, indent=2))


@server_group.command(name="stop")
def server_stop() -> None:
    """Stop the local server (and the runs' runner with it)."""
    from .runtime import local_server

    stopped = local_server.stop_server()
    click.echo("stopped the local server" if stopped else "no local server was running", err=True)


@server_group.command(name="ui")
@click.option("--no-browser", is_flag=True, help="Only print the URL.")
def server_ui(no_browser: bool) -> None:
    """Start the local server if needed, print its UI's URL and open it in a browser."""
    import webbrowser

    from .runtime import local_server

    url = local_server.ui_url(local_server.ensure_server(lambda line: click.echo(line, err=True)))
    click.echo(url)
    if not no_browser and not webbrowser.open(url):
        click.echo("(no browser to open here: open the URL above)", err=True)


@cli.command(name="card")
@click.argument("pathspec")
@click.argument("step", required=False)
@click.option("--id", "card_id", default=None, help="Only the cards with this @card id.")
@click.option(
    "-o",
    "--output",
    default=None,
    help="A folder to write the cards to (FILE.html for one card, '-' for stdout); "
    "without it they are written to a temporary folder and opened in the browser.",
)
def card_command(pathspec: str, step: str | None, card_id: str | None, output: str | None) -> None:
    """Write or open the Metaflow cards of a run, a step or a task (Flow/run [STEP])."""
    from . import cards

    found = cards.pages(cards.find(pathspec, step, card_id))
    if output == "-" or (output and output.endswith(".html")):
        if len(found) != 1:
            raise UsageError(
                f"{pathspec} has {len(found) - 1} cards; {output} takes one",
                hint="give a folder to --output, or narrow with STEP, a task pathspec or --id",
            )
        if output == "-":
            click.echo(found[0][1], nl=False)
        else:
            write_text(output, found[0][1])
            click.echo(output)
        return
    opening = output is None
    if output is None:
        import tempfile

        output = tempfile.mkdtemp(prefix="mfprefect-cards-")
    for name, text in found:
        write_text(os.path.join(output, name), text)
    click.echo("\n".join(str(Path(output, name)) for name, _ in found))
    if opening:
        import webbrowser

        webbrowser.open(Path(output, found[0][0]).resolve().as_uri())


def metaflow_top_level_args(given: dict[str, Any]) -> list[str]:
    """Options that Metaflow takes before the subcommand."""
    args: list[str] = []
    for spec in given.pop("with_", ()):
        args += ["--with", spec]
    for option in ("environment", "datastore", "datastore_root", "metadata", "branch"):
        value = given.pop(option, None)
        if value is not None:
            args += [f"--{option.replace('_', '-')}", value]
    if given.pop("production", False):
        args.append("--production")
    for name, path in given.pop("configs", ()):
        args += ["--config", name, path]
    for name, value in given.pop("config_values", ()):
        args += ["--config-value", name, value]
    return args


def export_args(given: dict[str, Any]) -> list[str]:
    """Options of `prefect export` itself."""
    args: list[str] = []
    for option in ("name", "work_pool", "work_queue", "workflow_timeout"):
        value = given.get(option)
        if value is not None:
            args += [f"--{option.replace('_', '-')}", str(value)]
    for tag in given.get("tags", ()):
        args += ["--tag", tag]
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point: every mfprefect error becomes one line, a hint, and its exit code."""
    try:
        code = cli.main(args=argv, prog_name="mfprefect", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("mfprefect: aborted", err=True)
        sys.exit(3)
    except MfprefectError as exc:
        report(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("mfprefect: interrupted", err=True)
        sys.exit(3)
    except Exception as exc:  # noqa: BLE001 - a bug of ours: still one line, never a traceback
        click.echo(f"mfprefect: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("set MFPREFECT_DEBUG=1 for the traceback, and please report it", err=True)
        if os.environ.get("MFPREFECT_DEBUG"):
            raise
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


def report(exc: MfprefectError) -> None:
    """Print an error as one line plus what to do; manifest errors also list their diagnostics."""
    from .errors import error_lines

    for line in error_lines(exc, ERROR_PREFIX):
        click.echo(line, err=True)


if __name__ == "__main__":
    main()
