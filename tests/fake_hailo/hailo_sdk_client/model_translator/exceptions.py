"""Stand-in for hailo_sdk_client.model_translator.exceptions."""

from hailo_sdk_client.exposed_definitions import HailoSDKError


class ParsingWithRecommendationException(HailoSDKError):
    """The parser failed; the message lists the errors and ends "Please try to parse the model again,
    using these end node names: a, b" (the wording public logs show), and `recommended_end_node_names`
    holds them (the attribute public retry code reads)."""

    def __init__(self, message: str, recommended_end_node_names=None):
        super().__init__(message)
        self.recommended_end_node_names = list(recommended_end_node_names or [])
