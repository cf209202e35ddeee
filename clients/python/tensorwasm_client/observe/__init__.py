"""The services' Prometheus metrics as the CLI reads them: scraped and queried (`scrape`),
summed into one board (`board`), and drawn in a terminal (`render`)."""

from tensorwasm_client.observe.board import Board, TenantRow, build_board
from tensorwasm_client.observe.scrape import Scrape, ScrapeError, metrics_url, scrape

__all__ = ["Board", "Scrape", "ScrapeError", "TenantRow", "build_board", "metrics_url", "scrape"]
