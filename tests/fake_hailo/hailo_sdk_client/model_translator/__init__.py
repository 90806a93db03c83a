"""Stand-in for hailo_sdk_client.model_translator (only its exceptions module is used)."""
