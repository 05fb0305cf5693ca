"""Content of each simulated request: endpoint, model, tokens, images, price and outcome."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
IMAGES = "/v1/images/generations"
ENDPOINTS: tuple[str, ...] = (CHAT, RESPONSES, EMBEDDINGS, IMAGES)

EMBEDDING_MODEL = "text-embedding-3-small"


@dataclass(frozen=True, slots=True)
class Price:
    """Credits per 1,000 prompt tokens, per 1,000 completion tokens and per image."""

    prompt: float
    completion: float
    image: float = 0.0


PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.00015, 0.0006),
    "gpt-4.1-mini": Price(0.0004, 0.0016),
    "o3-mini": Price(0.0011, 0.0044),
    "gpt-4.1": Price(0.002, 0.008),
    "gpt-4o": Price(0.0025, 0.01),
    "o1": Price(0.015, 0.06),
    EMBEDDING_MODEL: Price(0.00002, 0.0),
    "dall-e-3": Price(0.0, 0.0, 0.04),
    "gpt-image-1": Price(0.0, 0.0, 0.042),
}

# Milliseconds per generated token. Reasoning models get higher figures to stand in
# for the hidden reasoning tokens they generate before the visible ones.
TOKEN_MS: dict[str, float] = {
    "gpt-4o-mini": 8.0,
    "gpt-4.1-mini": 9.0,
    "o3-mini": 14.0,
    "gpt-4.1": 15.0,
    "gpt-4o": 14.0,
    "o1": 30.0,
}

MODEL_NAMES: tuple[str, ...] = tuple(PRICES)
MODEL_CODES: dict[str, int] = {name: code for code, name in enumerate(MODEL_NAMES)}
_MODEL_ARRAY = np.array(MODEL_NAMES, dtype=object)
_PROMPT_PRICE = np.array([PRICES[name].prompt for name in MODEL_NAMES])
_COMPLETION_PRICE = np.array([PRICES[name].completion for name in MODEL_NAMES])
_IMAGE_PRICE = np.array([PRICES[name].image for name in MODEL_NAMES])
_TOKEN_MS = np.array([TOKEN_MS.get(name, 0.0) for name in MODEL_NAMES])

EVERYDAY_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "o3-mini")


@dataclass(frozen=True, slots=True)
class RequestStyle:
    """The mix of requests one client sends.

    ``endpoint_weights`` follows ENDPOINTS. Token counts are log-normal with
    the given median and sigma. ``repeat_share`` of requests resend an
    earlier prompt of the same client (a retry or a saved prompt). With
    ``fixed_prompts`` > 0 the client cycles through that many prompts and
    nothing else, as a scheduled job or a stuck loop does.
    """

    models: tuple[str, ...]
    model_weights: tuple[float, ...]
    endpoint_weights: tuple[float, float, float, float] = (0.85, 0.1, 0.05, 0.0)
    prompt_median: float = 900.0
    prompt_sigma: float = 0.9
    completion_median: float = 350.0
    completion_sigma: float = 0.7
    stream_share: float = 0.5
    repeat_share: float = 0.06
    image_model: str = "dall-e-3"
    images_per_request: tuple[int, ...] = (1,)
    rate_limited_share: float = 0.004
    server_error_share: float = 0.002
    fixed_prompts: int = 0


def pick_style(rng: np.random.Generator, token_scale: float = 1.0) -> RequestStyle:
    """Draw an everyday client: one favourite model, some others, human-sized prompts."""
    favourite = int(rng.choice(len(EVERYDAY_MODELS), p=[0.45, 0.25, 0.12, 0.1, 0.08]))
    weights = np.full(len(EVERYDAY_MODELS), 0.15 / (len(EVERYDAY_MODELS) - 1))
    weights[favourite] = 0.85
    return RequestStyle(
        models=EVERYDAY_MODELS,
        model_weights=tuple(weights.tolist()),
        prompt_median=float(rng.uniform(400, 1500)) * token_scale,
        completion_median=float(rng.uniform(150, 500)) * token_scale**0.5,
        stream_share=float(rng.choice([0.05, 0.5, 0.9])),
    )


def scale_style_cost(rng: np.random.Generator, style: RequestStyle, cost_per_request: float) -> RequestStyle:
    """Scale a style's token sizes so that its mean cost per request is about ``cost_per_request``.

    The mean is measured on 400 sample requests, so it carries sampling noise.
    """
    sample_cost = max(float(fill_requests(rng, 400, style)["cost"].mean()), 1e-9)
    factor = cost_per_request / sample_cost
    return replace(style, prompt_median=style.prompt_median * factor, completion_median=style.completion_median * factor)


def random_hashes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Return ``count`` random 64-digit hex byte strings shaped like SHA-256 prompt digests."""
    digits = rng.integers(0, 16, size=(count, 64), dtype=np.uint8)
    characters = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[digits]
    return characters.view("S64").ravel()


def fill_requests(rng: np.random.Generator, count: int, style: RequestStyle) -> dict[str, np.ndarray]:
    """Draw the content columns of ``count`` requests in time order (no ts, ip, agent or country).

    ``prompt_hash`` comes back as fixed-width bytes ("S64"); the writer decodes it.
    """
    endpoint_index = rng.choice(len(ENDPOINTS), size=count, p=_normalise(style.endpoint_weights))
    chat = endpoint_index <= 1
    embedding = endpoint_index == ENDPOINTS.index(EMBEDDINGS)
    image = endpoint_index == ENDPOINTS.index(IMAGES)

    style_codes = np.array([MODEL_CODES[name] for name in style.models])
    model = style_codes[rng.choice(style_codes.size, size=count, p=_normalise(style.model_weights))]
    model[embedding] = MODEL_CODES[EMBEDDING_MODEL]
    model[image] = MODEL_CODES[style.image_model]

    prompt_tokens = np.rint(rng.lognormal(np.log(style.prompt_median), style.prompt_sigma, count)).astype(np.int64)
    prompt_tokens[image] = rng.integers(20, 120, int(image.sum()))
    prompt_hash, prompt_tokens, model = _reuse_prompts(rng, style, prompt_tokens, model, chat)

    completion_tokens = np.rint(rng.lognormal(np.log(style.completion_median), style.completion_sigma, count)).astype(np.int64)
    completion_tokens[~chat] = 0
    images = np.where(image, rng.choice(style.images_per_request, size=count), 0).astype(np.int64)
    stream = chat & (rng.random(count) < style.stream_share)

    status = _draw_status(rng, count, style)
    failed = status != 200
    completion_tokens[failed] = 0
    images[failed] = 0
    prompt_tokens = np.maximum(prompt_tokens, 1)

    cost = _price(model, prompt_tokens, completion_tokens, images, status)
    latency = _draw_latency(rng, model, endpoint_index, prompt_tokens, completion_tokens, images, status)
    return {
        "endpoint": np.array(ENDPOINTS, dtype=object)[endpoint_index],
        "model": _MODEL_ARRAY[model],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "images": images,
        "status": status,
        "stream": stream,
        "prompt_hash": prompt_hash,
        "cost": cost,
        "latency_ms": latency,
    }


def _normalise(weights: tuple[float, ...]) -> np.ndarray:
    values = np.array(weights, dtype=float)
    return values / values.sum()


def _reuse_prompts(
    rng: np.random.Generator,
    style: RequestStyle,
    prompt_tokens: np.ndarray,
    model: np.ndarray,
    chat: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick each request's prompt; a resent prompt keeps its hash, token count and model."""
    count = prompt_tokens.size
    if style.fixed_prompts > 0:
        source = np.arange(count) % style.fixed_prompts
    else:
        source = np.arange(count)
        repeat = chat & (rng.random(count) < style.repeat_share)
        repeat[0] = False
        back = rng.geometric(0.5, count)
        source[repeat] = np.maximum(source[repeat] - back[repeat], 0)
        source = _follow_to_original(source)

    hashes = random_hashes(rng, count)
    return hashes[source], prompt_tokens[source], model[source]


def _follow_to_original(source: np.ndarray) -> np.ndarray:
    """Resolve chains of repeats (a repeat of a repeat) to the first request of the chain."""
    while True:
        resolved = source[source]
        if np.array_equal(resolved, source):
            return source
        source = resolved


def _draw_status(rng: np.random.Generator, count: int, style: RequestStyle) -> np.ndarray:
    roll = rng.random(count)
    status = np.full(count, 200, dtype=np.int64)
    status[roll < style.rate_limited_share + style.server_error_share] = 500
    status[roll < style.rate_limited_share] = 429
    return status


def price_requests(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Return each request's cost in credits from the price table; failed requests cost nothing."""
    names, inverse = np.unique(columns["model"].astype(str), return_inverse=True)
    model = np.array([MODEL_CODES[name] for name in names.tolist()], dtype=np.int64)[inverse]
    return _price(model, columns["prompt_tokens"], columns["completion_tokens"], columns["images"], columns["status"])


def _price(
    model: np.ndarray, prompt_tokens: np.ndarray, completion_tokens: np.ndarray, images: np.ndarray, status: np.ndarray
) -> np.ndarray:
    cost = (
        prompt_tokens * _PROMPT_PRICE[model] / 1000.0
        + completion_tokens * _COMPLETION_PRICE[model] / 1000.0
        + images * _IMAGE_PRICE[model]
    )
    cost[status != 200] = 0.0
    return np.round(cost, 8)


def _draw_latency(
    rng: np.random.Generator,
    model: np.ndarray,
    endpoint_index: np.ndarray,
    prompt_tokens: np.ndarray,
    completion_tokens: np.ndarray,
    images: np.ndarray,
    status: np.ndarray,
) -> np.ndarray:
    count = model.size
    first_token = rng.lognormal(np.log(450.0), 0.4, count)
    latency = first_token + completion_tokens * _TOKEN_MS[model] * rng.lognormal(0.0, 0.2, count)

    embedding = endpoint_index == ENDPOINTS.index(EMBEDDINGS)
    latency[embedding] = 40.0 + prompt_tokens[embedding] / 100.0 + rng.exponential(30.0, int(embedding.sum()))
    image = endpoint_index == ENDPOINTS.index(IMAGES)
    latency[image] = rng.lognormal(np.log(9000.0), 0.3, int(image.sum())) * np.sqrt(np.maximum(images[image], 1))

    limited = status == 429
    latency[limited] = rng.uniform(2.0, 25.0, int(limited.sum()))
    broken = status == 500
    latency[broken] = rng.uniform(100.0, 30000.0, int(broken.sum()))
    return np.round(latency, 1)
