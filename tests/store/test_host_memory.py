"""PHASESCREEN_WORKER_MEMORY_GB defaults to the memory of the host the process runs on, or its container's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phasecore.errors import ExceedsWorkerBudget
from phasecore.settings import EngineSettings, check_compute, compute_estimate
from store.settings import ServiceSettings, host_memory_gb

_GIB = 2**30


def _physical_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / _GIB


def test_unset_worker_memory_is_this_hosts_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHASESCREEN_WORKER_MEMORY_GB", raising=False)
    detected = ServiceSettings().worker_memory_gb
    assert detected == host_memory_gb()
    assert 0 < detected <= round(_physical_gib(), 2)
    monkeypatch.setenv("PHASESCREEN_WORKER_MEMORY_GB", "12.5")
    assert ServiceSettings().worker_memory_gb == 12.5


def _cgroup(tmp_path: Path, v2_limit: str | None, v1_limit: str | None) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    proc = tmp_path / "proc-self-cgroup"
    lines = []
    if v2_limit is not None:
        (root / "app").mkdir(parents=True)
        (root / "app" / "memory.max").write_text(v2_limit + "\n")
        lines.append("0::/app")
    if v1_limit is not None:
        (root / "memory" / "docker" / "abc").mkdir(parents=True)
        (root / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(v1_limit + "\n")
        lines.append("4:memory:/docker/abc")
    proc.write_text("\n".join(lines) + "\n")
    return root, proc


def test_a_container_limit_below_the_hosts_memory_wins(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, v2_limit=str(2 * _GIB), v1_limit=None)
    assert host_memory_gb(cgroup_root=root, proc_cgroup=proc) == 2.0
    root, proc = _cgroup(tmp_path / "v1", v2_limit=None, v1_limit=str(3 * _GIB))
    assert host_memory_gb(cgroup_root=root, proc_cgroup=proc) == 3.0


def test_no_container_limit_means_the_physical_memory(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, v2_limit="max", v1_limit=str(9223372036854771712))
    assert host_memory_gb(cgroup_root=root, proc_cgroup=proc) == round(_physical_gib(), 2)
    assert host_memory_gb(cgroup_root=tmp_path / "absent", proc_cgroup=tmp_path / "absent") == round(
        _physical_gib(), 2
    )


def test_the_compute_estimate_scales_with_the_settings_that_cost() -> None:
    demo = EngineSettings().profile
    poison = EngineSettings(n=20, probes=64, sketch_dim=1 << 20, method="sketch").profile
    assert sum(compute_estimate(demo).values()) < 600  # the paper-size demo: minutes
    assert sum(compute_estimate(poison).values()) > 900  # 1.3e9 sketch cells per parameter tensor
    exact = EngineSettings(n=20, probes=64, sketch_dim=1 << 20, method="exact").profile
    assert sum(compute_estimate(exact).values()) < 120  # no sketch is made
    check_compute(demo, 600, limit_name="X")
    with pytest.raises(ExceedsWorkerBudget, match="X"):
        check_compute(poison, 900, limit_name="X")
