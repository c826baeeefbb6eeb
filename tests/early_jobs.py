"""Slow child processes that some tests only wait for, started when the session starts.

Most of the suite runs on one core. The Ray cluster (and its workers' imports of torch), the
submitit sweep, the reproducible θ₀ trainings, `demo --smoke`, the tiny study and the DDP/FSDP
ranks are child processes that can use the other core from the first test on; their tests
wait for them and run last (`pytest_collection_modifyitems`), so the work overlaps the whole
session instead of its own tests. A job starts only when a selected test asks for its fixture.

Every child gets the environment of the session's start, not whatever a test has patched by
the time it is launched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
EXECUTOR_TESTS = TESTS / "executors"
# fixture a test asks for -> the fixture that starts its work; tests that wait for a job's
# result (all but Ray's) run last
STARTERS = {"ray_cluster": "ray_cluster", "submitit_sweep_run": "_submitit_sweep_future",
            "theta0_trainings": "_theta0_future", "demo_run": "_demo_future",
            "study_run": "_study_future", "ema_ranks_run": "_ema_ranks_future"}
WAITED_FOR = tuple(name for name in STARTERS if name != "ray_cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "late: run after the other tests (when the background "
                            "jobs are done: for tests that are slow only under load)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that wait for an early job, or are marked `late`, run last, in collected order."""
    def waits(item: pytest.Item) -> bool:
        return item.get_closest_marker("late") is not None or _uses(item, *WAITED_FOR)
    items[:] = [i for i in items if not waits(i)] + [i for i in items if waits(i)]


def _uses(item: pytest.Item, *fixtures: str) -> bool:
    """Whether the test asks for any of `fixtures`, directly or through other fixtures."""
    return any(name in getattr(item, "fixturenames", ()) for name in fixtures)


def child_env(**settings: str) -> dict[str, str]:
    """The session's starting environment plus `settings` (captured before any test runs)."""
    return {**_START_ENV, **settings}


_START_ENV = dict(os.environ)


def _niced(level: int) -> Callable[[], None]:
    """Run in the child before it starts: a background job yields to the tests in the
    foreground (whose torch ops wait for every thread of their OpenMP team)."""
    return lambda: os.nice(level)


def finish(child: subprocess.Popen) -> tuple[str, str]:
    """Waits for `child`: its (stdout, stderr); a non-zero exit raises with its output."""
    out, err = child.communicate()
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, child.args, out, err)
    return out, err


def python_child(*args: str, env: dict[str, str], nice: int = 19) -> subprocess.Popen:
    """`python ARGS` in a child process at a low priority, its output kept."""
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_niced(nice))


def safebasin_child(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """The CLI in a child process, as a user runs it (`python -m safebasin`)."""
    return python_child("-m", "safebasin", *args, env=env)


@pytest.fixture(scope="session", autouse=True)
def _early_jobs(request: pytest.FixtureRequest) -> None:
    """Starts every early job a selected test needs, before the first test runs."""
    for name, starter in STARTERS.items():
        if any(_uses(item, name) for item in request.session.items):
            request.getfixturevalue(starter)


def _in_background(job: Callable[[], object]) -> Iterator[Future]:
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(job)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One local two-CPU Ray cluster for the session, its two workers importing torch,
    transformers and the sweep in the background (the first Ray sweep would wait for that)."""
    ray = pytest.importorskip("ray", reason="Ray is in the [ray] and [dev] extras")
    old = os.environ.get("PYTHONPATH")
    # workers import `executor_jobs` (and this module) by name; they inherit the raylet's
    # environment
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXECUTOR_TESTS), str(TESTS), old)
                                               if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    warm = ray.remote(num_cpus=1)(_import_the_sweep)
    warming = [warm.remote() for _ in range(2)]
    yield ray
    ray.wait(warming, num_returns=len(warming), timeout=60)
    ray.shutdown()


def _import_the_sweep() -> None:
    """What a sweep point imports first (about 3 s on a cold worker). Not niced: the Ray
    tests' own points run on these workers."""
    import safebasin.baselines.runner  # noqa: F401
    import safebasin.executors.worker  # noqa: F401
    import safebasin.sweep  # noqa: F401
    import safebasin.toy.train  # noqa: F401


@pytest.fixture(scope="session")
def _submitit_sweep_future(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future]:
    out = tmp_path_factory.mktemp("submitit") / "results"
    code = ("import sys; from sweep_engines_config import SUBMITIT_CONFIG as CONFIG; "
            "from safebasin.executors import SlurmExecutor; "
            "from safebasin.sweep import parse_config, sweep; "
            "sweep(parse_config(CONFIG), sys.argv[1], "
            "executor=SlurmExecutor(cluster='local', poll_s=0.1))")
    # the driver only polls; its jobs are fresh processes, each mostly torch's import
    env = child_env(PYTHONPATH=str(EXECUTOR_TESTS), OMP_NUM_THREADS="1")

    def run() -> Path:
        # ahead of the other background jobs: its 3 rounds of fresh processes are serial
        finish(python_child("-c", code, str(out), env=env, nice=10))
        return out
    yield from _in_background(run)


@pytest.fixture(scope="session")
def submitit_sweep_run(_submitit_sweep_future: Future) -> Path:
    """The smoke sweep's θ₀ and fine-tune (`sweep_engines_config.SUBMITIT_CONFIG`) run on
    submitit's local executor by a child process: its results folder."""
    return _submitit_sweep_future.result(timeout=600)


THETA0_SMOKE = ["--steps", "20", "--hidden-size", "32", "--layers", "2", "--heads", "2",
                "--intermediate-size", "64"]


def _without_pins(**settings: str) -> dict[str, str]:
    """The session's environment without reproducible mode's pins, plus `settings`."""
    from safebasin.reproducible import MARKER, PINNED_ENV

    env = {k: v for k, v in child_env().items() if k not in (*PINNED_ENV, MARKER)}
    return {**env, **settings}


@pytest.fixture(scope="session")
def _theta0_future(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future]:
    root = tmp_path_factory.mktemp("repro")
    world = root / "world"
    runs = {
        "pinned_avx2": (_without_pins(ATEN_CPU_CAPABILITY="avx2"), []),
        "pinned_default_mkl_avx2": (_without_pins(ATEN_CPU_CAPABILITY="default",
                                                  MKL_CBWR="AVX2", OMP_NUM_THREADS="2"), []),
        # one thread: with two, its OpenMP team spins against the other jobs (2x the CPU time)
        "unpinned_avx2": (_without_pins(ATEN_CPU_CAPABILITY="avx2", OMP_NUM_THREADS="1"),
                          ["--no-reproducible"]),
    }

    def run() -> dict[str, Path]:
        from safebasin.toy import ToyWorldConfig, build_world

        # the world has no torch numerics (random.Random(seed) only): built here, 0.6 s
        build_world(world, config=ToyWorldConfig(seed=0))
        outs = {name: root / name for name in runs}
        children = [safebasin_child("toy", "train", str(world), "-o", str(outs[name]),
                                    "--seed", "0", *THETA0_SMOKE, "--quiet", *flags, env=env)
                    for name, (env, flags) in runs.items()]
        for child in children:
            finish(child)
        return outs
    yield from _in_background(run)


@pytest.fixture(scope="session")
def theta0_trainings(_theta0_future: Future) -> dict[str, Path]:
    """θ₀ of the smoke world trained by the CLI in child processes three ways: pinned under
    two inherited kernel settings, and unpinned (the control)."""
    return _theta0_future.result(timeout=600)


@pytest.fixture(scope="session")
def _demo_future(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future]:
    workdir = tmp_path_factory.mktemp("demo") / "demo"

    def run() -> tuple[Path, str]:
        # unpinned, as the in-process run was (reproducible mode has its own tests)
        out, err = finish(safebasin_child("demo", "--smoke", "--quiet", "--threads", "1",
                                          "--no-reproducible", "--workdir", str(workdir),
                                          env=child_env()))
        return workdir, out + err
    yield from _in_background(run)


@pytest.fixture(scope="session")
def demo_run(_demo_future: Future) -> tuple[Path, str]:
    """`safebasin demo --smoke --quiet --threads 1 --no-reproducible` run by the CLI in a
    child process: (its work folder, what it printed)."""
    return _demo_future.result(timeout=600)


@pytest.fixture(scope="session")
def _study_future(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future]:
    root = tmp_path_factory.mktemp("study")

    def run() -> Path:
        finish(safebasin_child("sweep", str(TESTS / "sweep" / "study.yaml"), "-o",
                               str(root / "out"), "--quiet", "--threads", "1",
                               "--no-reproducible", env=child_env()))
        return root
    yield from _in_background(run)


@pytest.fixture(scope="session")
def study_run(_study_future: Future) -> Path:
    """The tiny study sweep (`sweep/study.yaml`) run by the CLI in a child process: the
    folder holding its `out/`."""
    return _study_future.result(timeout=600)


@pytest.fixture(scope="session")
def _ema_ranks_future(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future]:
    out = tmp_path_factory.mktemp("ema_dist")
    path = os.pathsep.join(str(p) for p in (TESTS / "ema", TESTS))

    def run() -> Path:
        finish(python_child(str(TESTS / "ema" / "ema_ranks.py"), str(out),
                            env=child_env(PYTHONPATH=path)))
        return out
    yield from _in_background(run)


@pytest.fixture(scope="session")
def ema_ranks_run(_ema_ranks_future: Future) -> Path:
    """The DDP and FSDP2 ranks of `ema/ema_ranks.py`, spawned by a child process: the folder
    where they wrote what they saw."""
    return _ema_ranks_future.result(timeout=600)
