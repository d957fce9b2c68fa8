"""Looking things up in the figures bench/run.py collected (docs/benchmarks.json), and formatting
a figure that may be missing: shared by the report's sections."""

from __future__ import annotations

from typing import Any

OURS = ("ours-onnx", "ours-tensorflow")


def result_of(data: dict[str, Any], server: str, payload: str, concurrency: int) -> dict[str, Any] | None:
    for run in data["runs"]:
        if run["key"] != server:
            continue
        for result in run["results"]:
            if result["payload"] == payload and result["concurrency"] == concurrency:
                return result  # type: ignore[no-any-return]
    return None


def run_of(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((run for run in data["runs"] if run["key"] == key), None)


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def errors_cell(result: dict[str, Any]) -> str:
    """Failed requests; those answered with an HTTP error (our server's 503s past MAX_INFLIGHT)
    said so: they are refusals, not failures."""
    detail = result.get("error_detail", {})
    if result["errors"] and set(detail) == {"status"}:
        return f"{result['errors']:,} refused"
    return f"{result['errors']:,}"


def is_sweep_variant(run: dict[str, Any]) -> bool:
    """A sweep variant: reported in the tuning table only."""
    return "[sweep:" in run["key"]


def our_runs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Our server's runs for the main tables: each backend, and variants given with --variant."""
    return [run for run in data["runs"] if run["key"].startswith(OURS) and not is_sweep_variant(run)]
