"""Options both command lines share (`mfprefect ...` and `python flow.py prefect ...`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import UsageError
from .manifest import Manifest, with_executor


def executor_options(click: Any) -> Callable[[Any], Any]:
    """`--executor` and `--address`: where this run's steps execute, over the manifest's choice.
    `click` is the command line's own (Metaflow's CLI has a vendored copy)."""

    def decorate(command: Any) -> Any:
        command = click.option(
            "--address",
            metavar="tcp://HOST:PORT",
            help="The Dask scheduler (implies --executor dask).",
        )(command)
        return click.option(
            "--executor",
            type=click.Choice(["local", "dask"]),
            help="Run steps here (local) or on a Dask cluster (dask); default: "
            "deployment.executor.",
        )(command)

    return decorate


def step_to_rerun_option(click: Any) -> Callable[[Any], Any]:
    """`--step`: re-run this step and everything after it, even where the origin succeeded."""
    return click.option(  # type: ignore[no-any-return]
        "--step",
        "step_to_rerun",
        default=None,
        metavar="STEP",
        help="Re-run this step and every step after it (Metaflow's resume STEP).",
    )


def resume_options(click: Any) -> Callable[[Any], Any]:
    """`--resume RUN_ID` and `--step`: a trigger that resumes a run on the deployment's workers."""

    def decorate(command: Any) -> Any:
        command = step_to_rerun_option(click)(command)
        return click.option(
            "--resume",
            "origin_run_id",
            default=None,
            metavar="RUN_ID",
            help="Resume this Metaflow run on the workers: reuse what succeeded, run the rest.",
        )(command)

    return decorate


def chosen_executor(manifest: Manifest, executor: str | None, address: str | None) -> Manifest:
    """The manifest with the executor the command line chose (unchanged if it chose none)."""
    if address and executor is None:
        executor = "dask"
    if executor == "local" and address:
        raise UsageError("--address is for --executor dask")
    if executor == "dask" and manifest.runtime.environment == "uv":
        raise UsageError(
            "the dask executor does not build locked environments (uv) on its workers yet",
            hint="run with --executor local, or install the flow's packages on the Dask workers",
        )
    return manifest if executor is None else with_executor(manifest, executor, address)
