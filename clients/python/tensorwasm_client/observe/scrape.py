"""One scrape of a Prometheus text endpoint, and the sums and quantiles read from it."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_SCRAPE_TIMEOUT_SECONDS = 5.0
# Sample names Prometheus clients add beside a counter's or histogram's own.
_CREATED_SUFFIX = "_created"

LabelFilter = Mapping[str, str | Callable[[str], bool]]


class ScrapeError(OSError):
    """A metrics endpoint that could not be read or did not answer Prometheus text."""


@dataclass(frozen=True)
class Sample:
    """One sample: its name (with any `_total`/`_bucket` suffix), labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Family:
    """A metric family: its name, type (counter, gauge, histogram, ...), help and samples."""

    name: str
    type: str
    help: str
    samples: tuple[Sample, ...]


def metrics_url(address: str) -> str:
    """`host:port`, `http://host:port` or a full URL as the URL to scrape (`/metrics`
    unless a path is given)."""
    url = address if "://" in address else f"http://{address}"
    scheme, _, rest = url.partition("://")
    if "/" not in rest:
        url = f"{scheme}://{rest}/metrics"
    return url


def fetch(url: str, timeout_seconds: float = DEFAULT_SCRAPE_TIMEOUT_SECONDS) -> str:
    """The exposition text at `url`.

    Raises:
        ScrapeError: the endpoint did not answer 200 with text.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:  # noqa: S310
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"cannot read metrics from {url}: {reason}") from None


def parse(text: str) -> list[Family]:
    """The families of a Prometheus text exposition.

    Raises:
        ScrapeError: the text is not the Prometheus format.
    """
    try:
        return [
            Family(
                family.name,
                family.type,
                family.documentation,
                tuple(Sample(s.name, dict(s.labels), float(s.value)) for s in family.samples),
            )
            for family in text_string_to_metric_families(text)
        ]
    except ValueError as exc:
        raise ScrapeError(f"not Prometheus text: {exc}") from None


class Scrape:
    """The samples of one or more scrapes (of replicas of one service, say), queried by
    name and labels: sums, sums by a label, and histogram quantiles."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)
        self._samples: dict[str, list[Sample]] = {}
        for family in self.families:
            for sample in family.samples:
                self._samples.setdefault(sample.name, []).append(sample)

    def __add__(self, other: Scrape) -> Scrape:
        return Scrape([*self.families, *other.families])

    def has(self, name: str) -> bool:
        """True when any sample is named `name`."""
        return name in self._samples

    def matching(self, name: str, labels: LabelFilter | None = None) -> list[Sample]:
        """The samples named `name` whose labels pass `labels` (a value, or a predicate)."""
        wanted = labels or {}
        return [
            sample
            for sample in self._samples.get(name, ())
            if all(_passes(sample.labels.get(key, ""), test) for key, test in wanted.items())
        ]

    def total(self, name: str, labels: LabelFilter | None = None) -> float:
        """The sum of the matching samples (0 when there are none)."""
        return sum(sample.value for sample in self.matching(name, labels))

    def by(self, name: str, label: str, labels: LabelFilter | None = None) -> dict[str, float]:
        """The matching samples summed by the value of `label`."""
        sums: dict[str, float] = {}
        for sample in self.matching(name, labels):
            key = sample.labels.get(label, "")
            sums[key] = sums.get(key, 0.0) + sample.value
        return sums

    def quantile(self, name: str, q: float, labels: LabelFilter | None = None) -> float | None:
        """The `q` quantile of histogram `name` (its `_bucket` samples summed over the
        matching series), interpolated within its bucket as Prometheus's
        `histogram_quantile` does; None when it holds no observation."""
        return histogram_quantile(q, self.buckets(name, labels))

    def buckets(self, name: str, labels: LabelFilter | None = None) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of histogram `name`, summed over the matching
        series, ascending."""
        counts: dict[float, float] = {}
        for sample in self.matching(f"{name}_bucket", labels):
            bound = float(sample.labels["le"])
            counts[bound] = counts.get(bound, 0.0) + sample.value
        return sorted(counts.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The `q` quantile of cumulative `buckets` ((upper bound, count) ascending, the last
    +Inf): linear within the bucket it falls in; the highest finite bound when it falls in
    the +Inf bucket; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def scrape(address: str, timeout_seconds: float = DEFAULT_SCRAPE_TIMEOUT_SECONDS) -> Scrape:
    """Fetches and parses the metrics at `address` (see `metrics_url`).

    Raises:
        ScrapeError: the endpoint did not answer Prometheus text.
    """
    return Scrape(parse(fetch(metrics_url(address), timeout_seconds)))


def is_created(sample: Sample) -> bool:
    """True for the `_created` timestamp a counter or histogram carries beside its values."""
    return sample.name.endswith(_CREATED_SUFFIX)


def _passes(value: str, test: str | Callable[[str], bool]) -> bool:
    return test(value) if callable(test) else value == test
