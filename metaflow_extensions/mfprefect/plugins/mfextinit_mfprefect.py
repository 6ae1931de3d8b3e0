# Registers `python flow.py prefect ...`; the code lives in the mfprefect package.
CLIS_DESC = [("prefect", "mfprefect.metaflow_cli.cli")]
