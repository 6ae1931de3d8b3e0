# Registers `python flow.py prefect ...` and `Deployer(...).prefect()`; the code lives in mfprefect.
# A code package carries this file to every step, including steps that run in a locked
# environment (--environment=uv) where mfprefect is not installed: there Metaflow would fail to
# import at all over a plugin it cannot find, and those steps need none of ours.
import importlib.util

if importlib.util.find_spec("mfprefect") is not None:
    CLIS_DESC = [("prefect", "mfprefect.metaflow_cli.cli")]
    DEPLOYER_IMPL_PROVIDERS_DESC = [("prefect", "mfprefect.deployer.PrefectDeployer")]
