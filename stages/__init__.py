"""The pipeline stages: thin scripts run by dvc.yaml as `python -m stages.<name>`."""
