"""GitOps for Prefect: the desired objects, the plan, and the only writer (apply)."""
