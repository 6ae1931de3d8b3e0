import hashlib
import os

from metaflow import FlowSpec, environment, step


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class SecretFlow(FlowSpec):
    """Receives two secrets through its environment; keeps only their hashes, prints them raw."""

    @environment(vars={"DB_PASSWORD": os.environ.get("DB_PASSWORD", ""), "GREETING": "hello"})
    @step
    def start(self):
        """Record hashes of what arrived, and print the values (which must show as ***)."""
        self.password_sha256 = _sha256(os.environ.get("DB_PASSWORD", ""))
        self.token_sha256 = _sha256(os.environ.get("API_TOKEN", ""))
        self.greeting = os.environ.get("GREETING")
        print("password is " + os.environ.get("DB_PASSWORD", "<unset>"))
        print("token is " + os.environ.get("API_TOKEN", "<unset>"))
        self.next(self.end)

    @step
    def end(self):
        """Print the deployment-wide secret; with PRINT_INHERITED=1, also what this step inherits
        from the runner's environment without referring to it."""
        self.shared_sha256 = _sha256(os.environ.get("SHARED_TOKEN", ""))
        print("shared is " + os.environ.get("SHARED_TOKEN", "<unset>"))
        if os.environ.get("PRINT_INHERITED") == "1":
            print("inherited " + os.environ.get("DB_PASSWORD", "<unset>"))


if __name__ == "__main__":
    SecretFlow()
