"""Each component's own registry (``runtime.metrics.new_registry``): two in one process do not
clash, and each carries the process's memory and the garbage collector's pauses."""

from __future__ import annotations

import gc

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.metrics import histogram, new_registry


def samples(registry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}"] = s.value
    return found


def test_two_components_in_one_process_keep_their_own_metrics():
    first, second = new_registry(), new_registry()
    a = histogram(first, "taskfleet_dispatch_seconds", "first component's")
    histogram(second, "taskfleet_dispatch_seconds", "the same name in another registry")
    a.observe(0.002)
    assert samples(first)["taskfleet_dispatch_seconds_count{}"] == 1
    assert samples(second)["taskfleet_dispatch_seconds_count{}"] == 0
    assert samples(first)["process_resident_memory_bytes{}"] > 0


def test_gc_pauses_are_counted_by_generation():
    registry = new_registry()
    before = samples(registry)["taskfleet_gc_pause_seconds_count{generation=2}"]
    gc.collect()
    after = samples(registry)
    assert after["taskfleet_gc_pause_seconds_count{generation=2}"] == before + 1
    assert after["taskfleet_gc_pause_seconds_sum{generation=2}"] > 0
    assert after["taskfleet_gc_pause_seconds_bucket{generation=2,le=+Inf}"] == before + 1
