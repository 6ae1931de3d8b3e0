"""The `prefect` command group Metaflow adds to every flow: `python flow.py prefect export ...`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from metaflow import parameters
from metaflow._vendor import click
from metaflow.exception import MetaflowException

from . import document, export
from .cli_options import (
    chosen_executor,
    executor_options,
    resume_options,
    step_to_rerun_option,
)
from .errors import MfprefectError

# How this command line starts an error message (runtime/waiter.py prints it the same way).
ERROR_PREFIX = "mfprefect: "


class UnsupportedFlow(MetaflowException):
    headline = "mfprefect cannot run this flow"


@click.group()
def cli() -> None:
    pass


@cli.group(help="Export, run and deploy this flow on Prefect with mfprefect.")
@click.pass_obj
def prefect(obj: Any) -> None:
    problems = export.unsupported(obj.flow, obj.graph, obj.environment.TYPE)
    if problems:
        raise UnsupportedFlow("\n".join(problems))
    obj.check(obj.graph, obj.flow, obj.environment, pylint=obj.pylint)


@prefect.command(
    name="export", help="Write the flow's pipeline manifest (YAML) to MANIFEST, or '-' for stdout."
)
@click.argument("manifest", default="-")
@click.option(
    "--name", "deployment_name", default=None, help="Deployment name (default: the pipeline name)."
)
@click.option("--work-pool", default=None, help="Prefect work pool the deployment runs on.")
@click.option("--work-queue", default=None, help="Prefect work queue within the pool.")
@click.option(
    "--tag", "tags", multiple=True, help="Tag for the deployment and its runs (repeatable)."
)
@click.option("--workflow-timeout", type=int, default=None, help="Flow-level timeout in seconds.")
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 if MANIFEST differs from what export would write.",
)
@click.pass_obj
def export_command(obj: Any, manifest: str, check: bool, **given: Any) -> None:
    _report(lambda: sys.exit(run_export(obj, manifest, check, **given)))


@parameters.add_custom_parameters(deploy_mode=False)
@prefect.command(
    name="run", help="Run this flow now on Prefect, as one flow run (no server to set up)."
)
@click.option("--tag", "run_tags", multiple=True, help="A Metaflow tag for the run (repeatable).")
@executor_options(click)
@click.pass_obj
def run_command(
    obj: Any,
    run_tags: tuple[str, ...],
    executor: str | None,
    address: str | None,
    **kwargs: Any,
) -> None:
    from .manifest import from_data
    from .runtime.local import run_locally

    data = _checked_data(obj)
    manifest = from_data(data, str(Path.cwd() / "in-memory-manifest.yaml"))
    values = {}
    for name in manifest.parameters:
        value = kwargs.get(name.replace("-", "_").lower())
        if value is not None:
            values[name] = value
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    _report_run(
        lambda: run_locally(
            chosen_executor(manifest, executor, address),
            values,
            echo=echo,
            tags=run_tags,
            error_prefix=ERROR_PREFIX,
        )
    )


@prefect.command(
    name="resume", help="Re-run what failed in an earlier run, reusing what succeeded."
)
@click.option("--clone-run-id", required=True, help="The Metaflow run id to resume.")
@click.option(
    "--tag", "run_tags", multiple=True, help="A Metaflow tag for the new run (repeatable)."
)
@step_to_rerun_option(click)
@executor_options(click)
@click.pass_obj
def resume_command(
    obj: Any,
    clone_run_id: str,
    run_tags: tuple[str, ...],
    step_to_rerun: str | None,
    executor: str | None,
    address: str | None,
) -> None:
    from .manifest import from_data
    from .runtime.local import run_locally

    manifest = from_data(_checked_data(obj), str(Path.cwd() / "in-memory-manifest.yaml"))
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    _report_run(
        lambda: run_locally(
            chosen_executor(manifest, executor, address),
            {},
            echo=echo,
            tags=run_tags,
            clone_run_id=clone_run_id,
            step_to_rerun=step_to_rerun,
            error_prefix=ERROR_PREFIX,
        )
    )


def _report_run(start: Any) -> None:
    """Run, then say it completed; errors are one line with their hint and exit code."""

    def run_and_say() -> None:
        from .runtime.local import completed

        summary = start()
        click.echo(completed(summary.pathspec), err=True)

    _report(run_and_say)


@prefect.command(
    name="create", help="Export this flow and apply it to the Prefect server (PREFECT_API_URL)."
)
@click.option("--name", default=None, help="Deployment name (default: the pipeline name).")
@click.option("--work-pool", required=True, help="Prefect work pool the deployment runs on.")
@click.option("--work-queue", default=None, help="Prefect work queue within the pool.")
@click.option("--tag", "tags", multiple=True, help="Deployment tag (repeatable).")
@click.option("--workflow-timeout", type=int, default=None, help="Flow-level timeout in seconds.")
@click.option(
    "--adopt", is_flag=True, help="Take over a same-named deployment mfprefect does not own."
)
@click.option(
    "--deployer-attribute-file", default=None, hidden=True, help="For Metaflow's Deployer API."
)
@click.pass_obj
def create_command(
    obj: Any,
    name: str | None,
    work_pool: str,
    work_queue: str | None,
    tags: tuple[str, ...],
    workflow_timeout: int | None,
    adopt: bool,
    deployer_attribute_file: str | None,
) -> None:
    from .cli import _server_url
    from .deploy import apply as applier
    from .deploy import sets
    from .deploy.desired import deployment_for
    from .manifest import from_data

    options = export.ExportOptions(name, work_pool, work_queue, tuple(tags), workflow_timeout)
    data = export.build(obj, None, options)
    _checked(data)

    def create() -> None:
        _server_url()
        spec = deployment_for(from_data(data, _in_memory_path()), data)
        result = applier.run(
            [spec],
            adopt=adopt,
            apply_set=sets.resolve(None, ()),  # MFPREFECT_SET, as for `mfprefect apply`
            echo=lambda line: click.echo(line, err=True),
        )
        click.echo(result.text(), err=True)
        attributes = {
            "name": spec.key,
            "flow_name": obj.flow.name,
            "metadata": obj.metadata.metadata_str(),
        }
        _write_json(deployer_attribute_file, attributes)

    _report(create)


@parameters.add_custom_parameters(deploy_mode=False)
@prefect.command(name="trigger", help="Start a run of this flow's deployment.")
@click.option("--name", default=None, help="Deployment name (default: the pipeline name).")
@click.option(
    "--run-param",
    "run_params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A parameter value (repeatable).",
)
@resume_options(click)
@click.option(
    "--deployer-attribute-file", default=None, hidden=True, help="For Metaflow's Deployer API."
)
@click.pass_obj
def trigger_command(
    obj: Any,
    name: str | None,
    run_params: tuple[str, ...],
    origin_run_id: str | None,
    step_to_rerun: str | None,
    deployer_attribute_file: str | None,
    **flow_params: Any,
) -> None:
    from .cli import _server_url
    from .deploy import trigger as triggers
    from .deploy.desired import qualified_name
    from .errors import UsageError
    from .manifest import from_data
    from .runtime.commands import parse_pairs

    def trigger() -> None:
        _server_url()
        manifest = from_data(export.build(obj, None, export.ExportOptions()), _in_memory_path())
        flow_name = qualified_name(manifest)
        target = f"{flow_name}/{name or flow_name}"
        pairs = []
        for spec in manifest.parameters.values():
            value = flow_params.get(spec.name.replace("-", "_").lower())
            # A resume keeps the origin's values: only those given on the command line change
            # (Metaflow's options carry every parameter's default).
            if value is not None and (not origin_run_id or _given(spec.name)):
                pairs.append((spec.name, value if isinstance(value, str) else json.dumps(value)))
        pairs += parse_pairs(run_params, "--run-param")
        if origin_run_id:
            flow_run_id = triggers.resume(target, origin_run_id, step_to_rerun, pairs)
        elif step_to_rerun:
            raise UsageError("--step is for --resume", hint="name the run: --resume RUN_ID")
        else:
            flow_run_id = triggers.trigger_with_strings(target, pairs)
        click.echo(flow_run_id)
        attributes = {
            "name": target,
            "metadata": obj.metadata.metadata_str(),
            "pathspec": f"{obj.flow.name}/{run_id_for(flow_run_id)}",
            "flow_run_id": flow_run_id,
        }
        _write_json(deployer_attribute_file, attributes)

    _report(trigger)


@prefect.command(name="package", hidden=True, help="Store this flow's code package (for apply).")
@click.option("--content", required=True, help="The content hash the package is stored under.")
@click.pass_obj
def package_command(obj: Any, content: str) -> None:
    from .package import store

    try:
        record = store(obj, content)
    except Exception as exc:  # noqa: BLE001 - reported to apply as one line
        text = " ".join(str(exc).split()) or type(exc).__name__
        click.echo(f"{ERROR_PREFIX}{type(exc).__name__}: {text[:400]}", err=True)
        sys.exit(3)
    click.echo(json.dumps(record, sort_keys=True))


@prefect.command(name="register-run", hidden=True, help="Register a run with the metadata service.")
@click.option("--run-id", required=True)
@click.option("--tag", "tags", multiple=True)
@click.pass_obj
def register_run_command(obj: Any, run_id: str, tags: tuple[str, ...]) -> None:
    # Metaflow's own runtime registers the run before `init`: a metadata service refuses tasks
    # of a run it does not know. A service that does not take client-chosen run ids (as
    # metaflow-local-service) answers with its own; the run then goes by that one.
    provider = obj.metadata
    if hasattr(provider, "_new_run"):
        recorded, _ = provider._new_run(run_id, tags=list(tags))
    else:
        provider.register_run_id(run_id, list(tags))
        recorded = run_id
    click.echo(json.dumps({"run_id": str(recorded)}))


def _given(parameter: str) -> bool:
    """Whether `--parameter` is on this command line (click 7 cannot tell a default apart)."""
    option = f"--{parameter}"
    return any(arg == option or arg.startswith(option + "=") for arg in sys.argv[1:])


def run_id_for(flow_run_id: str) -> str:
    """The Metaflow run id a deployment's flow run gets: known as soon as the flow run exists."""
    return "prefect-" + flow_run_id.replace("-", "")


def _in_memory_path() -> str:
    return str(Path.cwd() / "in-memory-manifest.yaml")


def _write_json(target: str | None, payload: dict[str, Any]) -> None:
    if target:
        with open(target, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)


def _report(action: Any) -> None:
    try:
        action()
    except MfprefectError as exc:
        click.secho(f"{ERROR_PREFIX}{exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(exc.hint, err=True)
        sys.exit(exc.exit_code)


def _checked(data: dict[str, Any]) -> None:
    from .manifest import validate_data

    problems = [d for d in validate_data(data) if d.severity == "error"]
    if problems:
        raise UnsupportedFlow("\n".join(d.text() for d in problems))


@prefect.command(name="compile", help="Write OUTPUT, a Python file that runs this flow on Prefect.")
@click.argument("output")
@click.pass_obj
def compile_command(obj: Any, output: str) -> None:
    from .cli import write_text
    from .compile import render

    data = _checked_data(obj)
    write_text(output, render(data, None, output))
    click.echo(f"{output}: written", err=True)


def _checked_data(obj: Any) -> dict[str, Any]:
    """The flow's manifest data, built in memory and validated like a file would be."""

    data = export.build(obj, None, export.ExportOptions())
    _checked(data)
    return data


def run_export(
    obj: Any,
    manifest: str,
    check: bool,
    deployment_name: str | None,
    work_pool: str | None,
    work_queue: str | None,
    tags: tuple[str, ...],
    workflow_timeout: int | None,
) -> int:
    """Build the manifest and write it (or compare it, with --check); return the exit code."""
    to_stdout = manifest == "-"
    options = export.ExportOptions(
        deployment_name=deployment_name,
        work_pool=work_pool,
        work_queue=work_queue,
        tags=tuple(tags),
        workflow_timeout=workflow_timeout,
    )
    data = export.build(obj, None if to_stdout else manifest, options)
    overrides = {
        f"deployment.{key}": value
        for key, value in (
            ("name", deployment_name),
            ("work_pool", work_pool),
            ("work_queue", work_queue),
            ("tags", list(tags) if tags else None),
            ("timeout_seconds", workflow_timeout),
        )
        if value is not None
    }
    target = None if to_stdout else Path(manifest)
    existing = (
        target.read_text(encoding="utf-8") if target is not None and target.is_file() else None
    )
    text = (
        document.render_over(existing, data, overrides) if existing else document.render_new(data)
    )
    for note in options.notes:
        click.echo(f"mfprefect: {note}", err=True)
    from .manifest import runtime_warnings

    for warning in runtime_warnings(data):
        click.echo(f"mfprefect: warning: {warning}", err=True)
    if check:
        if target is None:
            click.echo("mfprefect: --check needs a manifest path, not '-'", err=True)
            return 2
        if existing == text:
            click.echo(f"{manifest} is up to date")
            return 0
        click.echo(
            f"{manifest} is out of date: run `python {sys.argv[0]} prefect export {manifest}`",
            err=True,
        )
        return 1
    if target is None:
        sys.stdout.write(text)
        return 0
    if existing == text:
        click.echo(f"{manifest}: unchanged", err=True)
        return 0
    from .cli import write_text

    write_text(manifest, text)
    click.echo(f"{manifest}: written", err=True)
    return 0
