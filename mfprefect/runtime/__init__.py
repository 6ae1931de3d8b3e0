"""What runs inside Prefect, and the local Prefect server mfprefect starts on demand."""
