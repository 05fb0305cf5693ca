"""Countries, address blocks and user agents that simulated clients use.

The address plan is synthetic. Every country gets a few IPv4 /16 blocks per
provider type (residential ISP, mobile carrier, cloud) and an IPv6 /32 per
provider. The map is drawn once from a fixed seed, so every simulation uses
the same one. The blocks look like public addresses but belong to no real operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ISP = "isp"
MOBILE = "mobile"
CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class Country:
    """An ISO 3166-1 alpha-2 code with its UTC offsets and share of customers."""

    code: str
    utc_offsets: tuple[float, ...]
    weight: float
    region: str


# NOTE: offsets are standard (northern winter) time, which matches the default
# start in late November. Runs in other months are off by an hour where a
# country observes daylight saving time.
COUNTRIES: tuple[Country, ...] = (
    Country("US", (-5.0, -6.0, -8.0), 25.0, "americas"),
    Country("IN", (5.5,), 8.0, "apac"),
    Country("GB", (0.0,), 6.0, "europe"),
    Country("DE", (1.0,), 6.0, "europe"),
    Country("BR", (-3.0,), 4.0, "latam"),
    Country("FR", (1.0,), 4.0, "europe"),
    Country("CA", (-5.0, -8.0), 4.0, "americas"),
    Country("JP", (9.0,), 4.0, "apac"),
    Country("KR", (9.0,), 2.0, "apac"),
    Country("AU", (11.0, 8.0), 2.0, "apac"),
    Country("NL", (1.0,), 2.0, "europe"),
    Country("ES", (1.0,), 2.0, "europe"),
    Country("IT", (1.0,), 2.0, "europe"),
    Country("PL", (1.0,), 2.0, "europe"),
    Country("SG", (8.0,), 2.0, "apac"),
    Country("ID", (7.0,), 2.0, "apac"),
    Country("VN", (7.0,), 2.0, "apac"),
    Country("MX", (-6.0,), 2.0, "latam"),
    Country("TR", (3.0,), 2.0, "europe"),
    Country("UA", (2.0,), 1.0, "europe"),
    Country("NG", (1.0,), 1.0, "africa"),
    Country("ZA", (2.0,), 1.0, "africa"),
    Country("SE", (1.0,), 1.0, "europe"),
    Country("CH", (1.0,), 1.0, "europe"),
    Country("AR", (-3.0,), 1.0, "latam"),
    Country("PH", (8.0,), 1.0, "apac"),
    Country("EG", (2.0,), 1.0, "africa"),
    Country("TW", (8.0,), 1.0, "apac"),
)

COUNTRY_BY_CODE: dict[str, Country] = {country.code: country for country in COUNTRIES}

# Countries with cloud regions; clients elsewhere rent servers in the nearest one.
CLOUD_COUNTRIES: tuple[str, ...] = ("US", "DE", "GB", "NL", "FR", "SG", "JP", "IN", "BR", "CA", "AU", "KR", "SE")

# Leading hex digits of the IPv6 /32s handed out in each region.
IPV6_HEADS: dict[str, str] = {"americas": "260", "latam": "280", "europe": "2a0", "apac": "240", "africa": "2c0"}

# IPv4 first octets that are private, shared, loopback, link-local, multicast
# or otherwise reserved, or that contain documentation ranges.
RESERVED_FIRST_OCTETS = frozenset({0, 10, 100, 127, 169, 172, 192, 198, 203} | set(range(224, 256)))

NETWORK_MAP_SEED = 20261123


@dataclass(frozen=True, slots=True)
class Network:
    """One provider's address space in one country: an IPv4 /16 and an IPv6 /32."""

    country: str
    kind: str
    ipv4_prefix: str
    ipv6_prefix: str


def _build_network_map() -> dict[tuple[str, str], tuple[Network, ...]]:
    rng = np.random.default_rng(NETWORK_MAP_SEED)
    first_octets = [octet for octet in range(1, 224) if octet not in RESERVED_FIRST_OCTETS]
    blocks = [(first, second) for first in first_octets for second in range(256)]
    order = rng.permutation(len(blocks))
    next_block = 0
    networks: dict[tuple[str, str], tuple[Network, ...]] = {}

    for country in COUNTRIES:
        counts = {
            ISP: 2 + int(country.weight // 3),
            MOBILE: 2 + int(country.weight // 6),
            CLOUD: 2 if country.code in CLOUD_COUNTRIES else 0,
        }
        for kind, count in counts.items():
            provider_networks = []
            for _ in range(count):
                first, second = blocks[order[next_block]]
                next_block += 1
                head = IPV6_HEADS[country.region]
                ipv6 = f"{head}{int(rng.integers(16)):x}:{int(rng.integers(4096, 65536)):x}"
                provider_networks.append(Network(country.code, kind, f"{first}.{second}", ipv6))
            networks[(country.code, kind)] = tuple(provider_networks)

    return networks


NETWORKS = _build_network_map()


def pick_country(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> Country:
    """Draw a country by customer share, skipping the codes in ``exclude``."""
    candidates = [country for country in COUNTRIES if country.code not in exclude]
    weights = np.array([country.weight for country in candidates])
    return candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]


def pick_nearby_country(rng: np.random.Generator, home: Country, home_offset: float, max_hours: float) -> tuple[Country, float]:
    """Draw another country (and one of its UTC offsets) at most ``max_hours`` from ``home_offset``."""
    options = [
        (country, offset)
        for country in COUNTRIES
        for offset in country.utc_offsets
        if country.code != home.code and abs(offset - home_offset) <= max_hours
    ]
    weights = np.array([country.weight / len(country.utc_offsets) for country, _ in options])
    return options[int(rng.choice(len(options), p=weights / weights.sum()))]


def pick_offset(rng: np.random.Generator, country: Country) -> float:
    """Draw one of the country's UTC offsets, in hours."""
    return country.utc_offsets[int(rng.integers(len(country.utc_offsets)))]


def pick_network(rng: np.random.Generator, country: str, kind: str) -> Network:
    """Draw a provider network of ``kind``; countries without a cloud region use a US or DE cloud."""
    choices = NETWORKS.get((country, kind), ())
    if not choices:
        fallback = "DE" if COUNTRY_BY_CODE[country].region in ("europe", "africa") else "US"
        choices = NETWORKS[(fallback, kind)]
    return choices[int(rng.integers(len(choices)))]


def draw_subnets(rng: np.random.Generator, network: Network, count: int) -> list[str]:
    """Draw ``count`` distinct IPv4 /24 prefixes ("a.b.c") inside the network's /16."""
    third_octets = rng.choice(256, size=count, replace=False)
    return [f"{network.ipv4_prefix}.{int(octet)}" for octet in third_octets]


def ipv4_hosts(rng: np.random.Generator, subnet: str, count: int) -> np.ndarray:
    """Draw ``count`` host addresses in an IPv4 /24 (repeats allowed)."""
    hosts = rng.integers(2, 255, size=count)
    return np.array([f"{subnet}.{int(host)}" for host in hosts], dtype=object)


def draw_ipv6_site(rng: np.random.Generator, network: Network) -> str:
    """Draw a /48 site prefix ("xxxx:xxxx:xxxx") inside the network's /32."""
    return f"{network.ipv6_prefix}:{int(rng.integers(65536)):x}"


def ipv6_hosts(rng: np.random.Generator, site: str, count: int) -> np.ndarray:
    """Draw ``count`` addresses in one /64 of a /48 site, each with a random interface id."""
    subnet = int(rng.integers(1, 16))
    groups = rng.integers(0, 65536, size=(count, 4))
    return np.array(
        [f"{site}:{subnet:x}:{a:x}:{b:x}:{c:x}:{d:x}" for a, b, c, d in groups.tolist()],
        dtype=object,
    )


def subnet_of(address: str) -> str:
    """Return the /24 ("a.b.c") of an IPv4 address or the /48 of an IPv6 address."""
    if ":" in address:
        return ":".join(address.split(":")[:3])
    return address.rsplit(".", 1)[0]


SDK_AGENTS: tuple[str, ...] = (
    "OpenAI/Python 1.51.0",
    "OpenAI/Python 1.54.4",
    "OpenAI/Python 1.57.2",
    "AsyncOpenAI/Python 1.55.3",
    "OpenAI/NodeJS/4.67.3",
    "OpenAI/NodeJS/4.73.1",
)

TOOL_AGENTS: tuple[str, ...] = (
    "curl/8.5.0",
    "curl/7.81.0",
    "python-requests/2.32.3",
    "python-httpx/0.27.2",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "axios/1.7.7",
    "Go-http-client/2.0",
    "Python/3.12 aiohttp/3.10.10",
)

BROWSER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
)

MOBILE_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.39 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.39 Mobile Safari/537.36",
    "okhttp/4.12.0",
    "Dart/3.5 (dart:io)",
)

SCRIPT_AGENTS: tuple[str, ...] = (
    "python-requests/2.32.3",
    "python-httpx/0.27.2",
    "Python/3.12 aiohttp/3.10.10",
    "Go-http-client/2.0",
    "OpenAI/Python 1.54.4",
    "AsyncOpenAI/Python 1.55.3",
)


def pick_human_agents(rng: np.random.Generator, max_agents: int = 2) -> tuple[str, ...]:
    """Draw the 1 to ``max_agents`` clients one person uses: browser, SDK or command-line tool."""
    count = 1 if max_agents == 1 or rng.random() < 0.7 else int(rng.integers(2, max_agents + 1))
    agents: list[str] = []
    while len(agents) < count:
        family = rng.choice(3, p=[0.4, 0.45, 0.15])
        pool = (BROWSER_AGENTS, SDK_AGENTS, TOOL_AGENTS)[int(family)]
        agent = pool[int(rng.integers(len(pool)))]
        if agent not in agents:
            agents.append(agent)
    return tuple(agents)


def pick_agent(rng: np.random.Generator, pool: tuple[str, ...]) -> str:
    """Draw one user agent from ``pool``."""
    return pool[int(rng.integers(len(pool)))]
