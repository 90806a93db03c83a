"""Stand-in for hailo_sdk_client.model_translator.exceptions."""

from hailo_sdk_client.exposed_definitions import HailoSDKError


class ParsingWithRecommendationException(HailoSDKError):
    """The parser failed; the message lists the errors and recommended start/end nodes."""
