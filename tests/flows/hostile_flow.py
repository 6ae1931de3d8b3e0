import json
import os

from metaflow import Config, FlowSpec, JSONType, Parameter, environment, step


class HostileFlow(FlowSpec):
    """Records exactly what reached its step: parameters, environment variables and a config."""

    text = Parameter("text", help="Free text.", default="plain")
    blob = Parameter("blob", help="A JSON value.", type=JSONType, default='{"k": 1}')
    settings = Config("settings", default_value={"note": "plain"})

    @environment(vars={"STEP_TEXT": "plain"})
    @step
    def start(self):
        """Copy what arrived into artifacts."""
        self.seen_text = self.text
        self.seen_blob = json.loads(json.dumps(self.blob))
        self.seen_step_env = os.environ.get("STEP_TEXT")
        self.seen_deploy_env = os.environ.get("DEPLOY_TEXT")
        self.seen_config = json.loads(json.dumps(self.settings.to_dict()))
        self.next(self.end)

    @step
    def end(self):
        """Done."""


if __name__ == "__main__":
    HostileFlow()
