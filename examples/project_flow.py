from metaflow import FlowSpec, current, project, step


@project(name="demo_project")
class ProjectFlow(FlowSpec):
    """A flow that belongs to the 'demo_project' project."""

    @step
    def start(self):
        """Record the project and branch names."""
        self.project_name = current.project_name
        self.branch_name = current.branch_name
        self.next(self.end)

    @step
    def end(self):
        """Record the project and branch names again."""
        self.end_project_name = current.project_name
        self.end_branch_name = current.branch_name


if __name__ == "__main__":
    ProjectFlow()
