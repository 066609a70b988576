"""Comparing snapshots: loading sides, shares per function and per stack, and the gate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from otlp_ebpf.analysis.diff import (
    DiffOptions,
    RunSet,
    WeightedStack,
    diff_runs,
    expand_paths,
    load_runs,
    reduce_stacks,
)
from otlp_ebpf.analysis.gate import evaluate, to_document
from otlp_ebpf.errors import UsageError
from otlp_ebpf.model import (
    Allocation,
    CpuSnapshot,
    MemSnapshot,
    Snapshot,
    StackCount,
    SyscallsSnapshot,
    write_snapshot,
)

NOISE = [("main", "init"), ("main", "work", "memcpy"), ("main", "libc.so.6+0x1a2b")]


def sampled_cpu(hot_weight: float, samples: int, seed: int) -> CpuSnapshot:
    """A benchmark profile like the cpu collector writes: `hot` and `cold` under `work`,
    a few noise frames, kernel frames under the hot loop; `samples` drawn at random."""
    paths = {
        ("main", "work", "hot"): hot_weight,
        ("main", "work", "hot", "asm_sysvec_apic_timer_interrupt_[k]"): 0.02 * hot_weight,
        ("main", "work", "cold"): 1.0,
        ("main", "parse"): 0.4,
        **{p: 0.01 for p in NOISE},
    }
    rng = random.Random(seed)
    drawn = rng.choices(list(paths), weights=list(paths.values()), k=samples)
    counts: dict[tuple[str, ...], int] = {}
    for path in drawn:
        counts[path] = counts.get(path, 0) + 1
    stacks = tuple(StackCount(42, 42, "bench", p, n) for p, n in sorted(counts.items()))
    return CpuSnapshot(
        started_at="2026-01-01T00:00:00Z",
        duration_s=5.0,
        host="ci",
        samples_total=samples,
        stacks=stacks,
    )


def sides(base: list[Snapshot], new: list[Snapshot]) -> tuple[RunSet, RunSet]:
    return (
        RunSet("BASE", tuple(f"b{i}.json" for i in range(len(base))), tuple(base)),
        RunSet("NEW", tuple(f"n{i}.json" for i in range(len(new))), tuple(new)),
    )


def save(snapshot: Snapshot, path: Path) -> str:
    with path.open("w", encoding="utf-8") as fh:
        write_snapshot(snapshot, fh)
    return str(path)


# ---------------------------------------------------------------- loading


def test_expand_paths_accepts_dirs_globs_and_lists(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("b.json", "a.json", "notes.txt"):
        (runs / name).write_text("{}")
    single = tmp_path / "one.json"
    single.write_text("{}")
    assert expand_paths(str(runs)) == [str(runs / "a.json"), str(runs / "b.json")]
    assert expand_paths(f"{runs}/b*.json") == [str(runs / "b.json")]
    assert expand_paths(f"{single}, {runs}") == [
        str(single),
        str(runs / "a.json"),
        str(runs / "b.json"),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{tmp}/empty", r"holds no \*\.json"),
        ("{tmp}/none-*.json", "matches no file"),
        (",", "no snapshot"),
    ],
)
def test_expand_paths_says_what_is_missing(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=message):
        expand_paths(spec.format(tmp=tmp_path))


def test_load_runs_rejects_mixed_kinds(tmp_path: Path) -> None:
    cpu = save(sampled_cpu(1.0, 100, 1), tmp_path / "a.json")
    sys_ = save(SyscallsSnapshot(started_at="t", duration_s=1, host="h"), tmp_path / "b.json")
    with pytest.raises(UsageError, match="mixes snapshot kinds"):
        load_runs(f"{cpu},{sys_}", "BASE")


def test_diff_of_two_kinds_is_a_usage_error(tmp_path: Path) -> None:
    base = load_runs(save(sampled_cpu(1.0, 100, 1), tmp_path / "a.json"), "BASE")
    new = load_runs(
        save(SyscallsSnapshot(started_at="t", duration_s=1, host="h"), tmp_path / "b.json"), "NEW"
    )
    with pytest.raises(UsageError, match="cannot compare a cpu snapshot with a syscalls"):
        diff_runs(base, new, DiffOptions())


# ---------------------------------------------------------------- shares


def test_self_and_inclusive_shares_count_recursion_once() -> None:
    stacks = [
        WeightedStack(("app", "main", "fib", "fib", "fib"), 3.0, 3),
        WeightedStack(("app", "main", "io"), 1.0, 1),
    ]
    shares = reduce_stacks(stacks, "function", "self")
    assert shares.share("fib") == pytest.approx(0.75)
    assert shares.share("main") == 0.0
    assert shares.share("fib", other=True) == pytest.approx(0.75)
    assert shares.share("main", other=True) == pytest.approx(1.0)
    inclusive = reduce_stacks(stacks, "function", "total")
    assert inclusive.share("main") == pytest.approx(1.0)
    by_stack = reduce_stacks(stacks, "stack", "stack")
    assert by_stack.share("app;main;io") == pytest.approx(0.25)


def test_each_run_is_normalised_to_its_own_total() -> None:
    # Same profile, ten times the samples: nothing changed.
    short, long = sampled_cpu(1.0, 300, 5), sampled_cpu(1.0, 300, 5)
    long = CpuSnapshot(
        started_at="t",
        duration_s=50,
        host="h",
        stacks=tuple(StackCount(1, 1, s.comm, s.frames, s.count * 10) for s in long.stacks),
    )
    report = diff_runs(*sides([short], [long]), DiffOptions(threshold=0.0))
    assert all(abs(r.delta) < 1e-9 for r in report.sections[0].rows)
    assert not evaluate(report).failed


def test_hot_function_doubled_fails_the_gate_and_ranks_first() -> None:
    report = diff_runs(
        *sides([sampled_cpu(1.0, 800, 1)], [sampled_cpu(2.0, 800, 2)]), DiffOptions(threshold=5.0)
    )
    verdict = evaluate(report)
    assert verdict.failed
    section, worst = verdict.regressions[0]
    assert (section.name, worst.key) == ("cpu", "hot")
    assert worst.before == pytest.approx(41, abs=5)
    assert worst.after == pytest.approx(58, abs=5)
    assert "REGRESSION: hot self" in verdict.reason
    assert "beyond the 5 pts threshold" in verdict.reason
    assert report.sections[0].improvements()[0].key == "cold"


def test_run_to_run_sampling_noise_passes_the_gate() -> None:
    for seed in range(5):
        report = diff_runs(
            *sides([sampled_cpu(1.0, 300, seed)], [sampled_cpu(1.0, 300, seed + 100)]),
            DiffOptions(threshold=2.0),
        )
        verdict = evaluate(report)
        assert not verdict.failed, verdict.reason
        assert verdict.reason.startswith("OK: ")


def test_growth_below_the_threshold_passes_with_the_reason() -> None:
    report = diff_runs(
        *sides([sampled_cpu(1.0, 3000, 1)], [sampled_cpu(1.15, 3000, 2)]), DiffOptions(threshold=10)
    )
    verdict = evaluate(report)
    assert not verdict.failed
    assert "within the threshold" in verdict.reason
    ungated = diff_runs(
        *sides([sampled_cpu(1.0, 3000, 1)], [sampled_cpu(1.15, 3000, 2)]), DiffOptions()
    )
    assert evaluate(ungated).reason.startswith("no gate")
    assert not any(r.regression for r in ungated.sections[0].rows)


def test_repeated_runs_use_run_to_run_noise() -> None:
    base = [sampled_cpu(1.0, 500, s) for s in range(5)]
    new = [sampled_cpu(2.0, 500, s + 50) for s in range(5)]
    report = diff_runs(*sides(base, new), DiffOptions(threshold=5.0))
    assert report.repeated
    assert report.sections[0].method == "mann-whitney+binomial"
    hot = next(r for r in report.sections[0].rows if r.key == "hot")
    assert hot.regression
    # Five runs against five: the smallest one-sided exact p-value is 1/252.
    assert hot.p_beyond == pytest.approx(1 / 252)
    same = diff_runs(
        *sides(base, [sampled_cpu(1.0, 500, s + 50) for s in range(5)]), DiffOptions(threshold=2.0)
    )
    assert not evaluate(same).failed


def test_min_share_hides_rows_small_in_both_runs() -> None:
    report = diff_runs(
        *sides([sampled_cpu(1.0, 1000, 1)], [sampled_cpu(1.0, 1000, 2)]), DiffOptions(min_share=5)
    )
    keys = {r.key for r in report.sections[0].rows}
    assert keys == {"hot", "cold", "parse"}


def test_by_stack_keys_are_folded_paths_with_comm() -> None:
    report = diff_runs(
        *sides([sampled_cpu(1.0, 800, 1)], [sampled_cpu(2.0, 800, 2)]),
        DiffOptions(by="stack", threshold=5.0),
    )
    assert report.sections[0].regressions()[0].key == "bench;main;work;hot"
    assert report.sections[0].other_label == ""
    with pytest.raises(UsageError, match="does not apply with --by stack"):
        diff_runs(
            *sides([sampled_cpu(1.0, 10, 1)], [sampled_cpu(1.0, 10, 1)]),
            DiffOptions(by="stack", metric="self"),
        )


def test_total_metric_gates_on_inclusive_share() -> None:
    base, new = sampled_cpu(1.0, 2000, 1), sampled_cpu(2.0, 2000, 2)
    report = diff_runs(*sides([base], [new]), DiffOptions(metric="total", threshold=5.0))
    top = report.sections[0].regressions()[0]
    # `work` holds hot and cold: its inclusive share grows less than hot's own.
    assert top.key == "hot"
    work = next(r for r in report.sections[0].rows if r.key == "work")
    assert work.delta > 0
    assert work.other == (0.0, 0.0)
    with pytest.raises(UsageError, match="use one of: self, total"):
        diff_runs(*sides([base], [new]), DiffOptions(metric="p99"))


def off_cpu_run(lock_ns: int, blocks: int) -> CpuSnapshot:
    return CpuSnapshot(
        started_at="t",
        duration_s=1,
        host="h",
        stacks=(StackCount(1, 1, "srv", ("main", "serve"), 100),),
        off_cpu=(
            StackCount(1, 1, "srv", ("main", "lock_wait", "futex_wait_[k]"), blocks, lock_ns),
            StackCount(1, 1, "srv", ("main", "read", "vfs_read_[k]"), blocks, 10_000_000),
        ),
    )


def test_off_cpu_shares_weigh_blocked_time() -> None:
    report = diff_runs(
        *sides([off_cpu_run(10_000_000, 400)], [off_cpu_run(30_000_000, 400)]),
        DiffOptions(threshold=5.0),
    )
    assert [(s.name, s.metric) for s in report.sections] == [
        ("cpu", "self"),
        ("cpu", "total"),
        ("off_cpu", "self"),
        ("off_cpu", "total"),
    ]
    off = report.sections[2]
    lock = next(r for r in off.rows if r.key == "futex_wait_[k]")
    assert (lock.before, lock.after) == (pytest.approx(50.0), pytest.approx(75.0))
    assert lock.events_before == 800
    assert lock.regression
    only_off = diff_runs(
        *sides([off_cpu_run(1, 1)], [off_cpu_run(1, 1)]), DiffOptions(profiles=("off_cpu",))
    )
    assert {s.name for s in only_off.sections} == {"off_cpu"}
    with pytest.raises(UsageError, match="no profile page_faults"):
        diff_runs(
            *sides([off_cpu_run(1, 1)], [off_cpu_run(1, 1)]), DiffOptions(profiles=("page_faults",))
        )


def test_a_profile_on_one_side_only_is_noted() -> None:
    report = diff_runs(*sides([sampled_cpu(1.0, 50, 1)], [off_cpu_run(5, 5)]), DiffOptions())
    assert report.notes == ("profile off_cpu only in NEW: not compared",)


def mem_run(leak_bytes: int) -> MemSnapshot:
    return MemSnapshot(
        started_at="t",
        duration_s=1,
        host="h",
        outstanding=(
            Allocation(7, ("main", "cache_put", "malloc"), leak_bytes, 500, comm="svc"),
            Allocation(7, ("main", "load", "malloc"), 1_000_000, 500, comm="svc"),
        ),
    )


def test_mem_bytes_use_allocation_counts_for_noise() -> None:
    report = diff_runs(
        *sides([mem_run(1_000_000)], [mem_run(3_000_000)]), DiffOptions(metric="self", threshold=5)
    )
    names = [s.name for s in report.sections]
    assert names == ["outstanding_bytes", "outstanding_objects"]
    # Both stacks end in malloc: its self share cannot move, and callers have no self bytes.
    assert [(r.key, r.delta) for r in report.sections[0].rows] == [("malloc", 0.0)]
    assert not evaluate(report).failed  # --metric self alone cannot see the caller grow
    by_total = diff_runs(
        *sides([mem_run(1_000_000)], [mem_run(3_000_000)]), DiffOptions(metric="total", threshold=5)
    )
    grown = by_total.sections[0].regressions()[0]
    assert (grown.key, grown.before, grown.after) == ("cache_put", 50.0, 75.0)
    assert grown.events_before == 1000
    assert grown.regression


def test_default_gate_names_the_caller_whose_inclusive_share_grew_and_the_path() -> None:
    # cache_put triples what it allocates through the shared malloc; load stays the same.
    report = diff_runs(*sides([mem_run(1_000_000)], [mem_run(3_000_000)]), DiffOptions(threshold=5))
    verdict = evaluate(report)
    assert verdict.failed
    assert verdict.reason.startswith(
        "REGRESSION: cache_put total 50.00% -> 75.00% (+25.00 pts; self unchanged) via malloc "
        "in outstanding_bytes"
    ), verdict.reason
    document = to_document(report, verdict)
    assert document["metric"] == "self+total"
    assert document["regressions"][0] == {
        "section": "outstanding_bytes",
        "metric": "total",
        "key": "cache_put",
        "delta": pytest.approx(25.0),
        "via": ["malloc"],
    }


def test_gate_names_a_function_whose_growth_runs_through_a_namesake() -> None:
    # The vDSO's clock_gettime calls a function symbolized under the same name: the growth
    # path of a's inclusive share runs through thread_cpu_s into clock_gettime, whose own path
    # leads to clock_gettime again. The verdict must still be reached, at clock_gettime.
    def run(clock: int, a: int) -> CpuSnapshot:
        paths = {
            ("main", "a", "thread_cpu_s", "clock_gettime", "clock_gettime"): clock,
            ("main", "a"): a,
            ("main", "b"): 1000 - clock - a,
        }
        stacks = tuple(StackCount(42, 42, "spin", p, n) for p, n in paths.items())
        return CpuSnapshot(
            started_at="t", duration_s=1.0, host="ci", samples_total=1000, stacks=stacks
        )

    report = diff_runs(*sides([run(50, 400)], [run(300, 450)]), DiffOptions(threshold=5))
    verdict = evaluate(report)
    assert verdict.failed
    assert verdict.reason.startswith("REGRESSION: clock_gettime total "), verdict.reason


def test_growth_path_follows_the_callee_that_grew_until_the_growth_is_self_time() -> None:
    from otlp_ebpf.analysis.diff import growth_path

    before = {
        ("w", "main", "hot_a", "spin"): 0.5,
        ("w", "main", "hot_b", "spin"): 0.45,
        ("w", "main", "hot_b", "spin", "clock"): 0.05,
    }
    after = {
        ("w", "main", "hot_a", "spin"): 0.25,
        ("w", "main", "hot_b", "spin"): 0.68,
        ("w", "main", "hot_b", "spin", "clock"): 0.07,
    }
    assert growth_path(before, after, "hot_b") == ("spin",)
    assert growth_path(before, after, "main") == ("hot_b", "spin")
    assert growth_path(before, after, "hot_a") == ()


def test_a_function_whose_self_time_grew_is_named_by_its_self_share() -> None:
    # hot grows by its own time: the inclusive rows of its callers grow too, but the verdict
    # names hot's self share, not a caller.
    report = diff_runs(
        *sides([sampled_cpu(1.0, 2000, 1)], [sampled_cpu(2.0, 2000, 2)]), DiffOptions(threshold=5)
    )
    assert evaluate(report).reason.startswith("REGRESSION: hot self"), evaluate(report).reason


def test_json_document_lists_rows_with_intervals() -> None:
    report = diff_runs(
        *sides([sampled_cpu(1.0, 800, 1)], [sampled_cpu(2.0, 800, 2)]), DiffOptions(threshold=5.0)
    )
    document = json.loads(json.dumps(to_document(report, evaluate(report))))
    assert document["verdict"] == "fail"
    assert document["threshold"] == 5.0
    assert document["regressions"][0]["key"] == "hot"
    hot = next(r for r in document["sections"][0]["rows"] if r["key"] == "hot")
    assert hot["ci"][0] < hot["delta"] < hot["ci"][1]
    assert 0 <= hot["p_value"] < 0.001
    assert hot["total"]["after"] >= hot["after"]
    assert hot["events"] == [800, 800]
