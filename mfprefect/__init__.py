"""mfprefect: run Metaflow pipelines on Prefect through a reviewable pipeline manifest."""
