# Registers `python flow.py prefect ...` and `Deployer(...).prefect()`; the code lives in mfprefect.
CLIS_DESC = [("prefect", "mfprefect.metaflow_cli.cli")]
DEPLOYER_IMPL_PROVIDERS_DESC = [("prefect", "mfprefect.deployer.PrefectDeployer")]
