"""Benchmark cases: every module here is found and run by bench.harness.

A case module defines (the interface every module follows):

    SIZES = {"small": {...}, "large": {...}}      # parameters per size; "small" runs in < 30 s per implementation
    CASES = {case: {impl: fn}}                    # impl "reference" is what a user would pick instead of relm
    def prepare(size: str, work: Path) -> None    # writes the input data under `work` (not timed); idempotent
    def project(rows: list[dict], n: float) -> dict | None   # optional, see bench.harness.project_linear

Each fn(size, work) returns {"items": int, "unit": str, ...extra figures}. Optional keys the harness understands:
"sentences" (the x of the linear projection, default items), "timed_s" (seconds of the measured part when fn has
setup work that is not to be timed; items_per_s then uses it) and "digest" (a hash of the output: the table says
whether the implementations agree).
"""
