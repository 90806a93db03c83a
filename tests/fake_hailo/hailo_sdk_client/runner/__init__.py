"""Stand-in for hailo_sdk_client.runner (ClientRunner lives in client_runner)."""
