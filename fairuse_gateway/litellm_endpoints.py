"""LiteLLM call types and the OpenAI-compatible endpoint each one serves.

Kept apart from the callback so readers of LiteLLM's spend logs need not import LiteLLM.
"""

ENDPOINTS: dict[str, str] = {
    "completion": "/v1/chat/completions",
    "acompletion": "/v1/chat/completions",
    "text_completion": "/v1/completions",
    "atext_completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "aembedding": "/v1/embeddings",
    "image_generation": "/v1/images/generations",
    "aimage_generation": "/v1/images/generations",
    "image_edit": "/v1/images/edits",
    "aimage_edit": "/v1/images/edits",
    "transcription": "/v1/audio/transcriptions",
    "atranscription": "/v1/audio/transcriptions",
    "speech": "/v1/audio/speech",
    "aspeech": "/v1/audio/speech",
    "responses": "/v1/responses",
    "aresponses": "/v1/responses",
}
