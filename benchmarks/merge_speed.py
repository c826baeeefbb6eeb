"""Merge speed and memory against the I/O floor, measured in the same run.

Generates synthetic bf16 checkpoints with real model shapes (Llama-3.2-1B: 2.47 GB, 3 shards;
SmolLM2-135M), then prints, as the median of several runs:
  * the I/O floor: read every input once (cat) + write one output's bytes with fsync (dd);
  * what a Python process that only imports torch costs (`python -c 'import torch'`): part of
    every CLI merge's wall time that no merge engine removes;
  * `safebasin merge lerp` wall time, ratio to the floor, GB/s over input bytes, peak RSS;
  * offline `safebasin merge ema` over K checkpoints against the floor of reading K+1 inputs;
  * optionally mergekit's task_arithmetic on the same pair (`--mergekit PATH/mergekit-yaml`);
  * with `--methods ties,slerp,...`: the non-linear methods, each against the floor of its
    own inputs (one pass over the data, or two for methods with a statistics pass: target
    1.2x and 2x the floor), with mergekit's same method beside it when `--mergekit` is given.
Each merge runs in a fresh subprocess so that peak RSS is its own.

    python benchmarks/merge_speed.py                 # full: 1.2B pair + 135M pair + EMA K=4
    python benchmarks/merge_speed.py --quick         # 135M shapes only
    python benchmarks/merge_speed.py --shapes llama-3.2-1b --methods all --ema-k 0
    python benchmarks/merge_speed.py --shapes llama-3.1-8b --layers 2 --methods all --no-lerp

`--cold` (root only) empties the page cache before every timed floor and merge, so that each
reads its inputs from the disk: the fair comparison for inputs larger than memory, where a
warm run's figures depend on what the previous run left cached (identical runs differed 2x).

`--layers N` keeps every tensor's shape and only N of the decoder layers: peak memory depends on
the largest tensors (the 8B's 1 GB embedding and head, its 14336-wide MLP), not on their number,
so the 8B shape's memory is measured without 16 GB inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from safebasin.checkpoint import ShardWriter, TensorSpec  # noqa: E402

SHAPES = {
    "llama-3.2-1b": dict(vocab=128256, hidden=2048, layers=16, inter=8192, heads=32, kv=8,
                         tied=True, shards=3),
    "smollm2-135m": dict(vocab=49152, hidden=576, layers=30, inter=1536, heads=9, kv=3,
                         tied=True, shards=1),
    "llama-3.1-8b": dict(vocab=128256, hidden=4096, layers=32, inter=14336, heads=32, kv=8,
                         tied=False, shards=4),
}

# method: (safebasin arguments, mergekit method, its per-model and global parameters,
#          fine-tunes it merges, passes over the inputs it needs)
METHODS = {
    "ties": (["--density", "0.2"], "ties", {"weight": 1.0, "density": 0.2}, {}, 1, 2),
    "dare-linear": (["--density", "0.2", "--seed", "0"], "dare_linear",
                    {"weight": 1.0, "density": 0.2}, {"rescale": False}, 1, 1),
    "dare-ties": (["--density", "0.2", "--seed", "0"], "dare_ties",
                  {"weight": 1.0, "density": 0.2}, {"rescale": False}, 1, 1),
    "breadcrumbs": (["--density", "0.2", "--gamma", "0.01"], "breadcrumbs",
                    {"weight": 1.0, "density": 0.2, "gamma": 0.01}, {}, 1, 2),
    "breadcrumbs-ties": (["--density", "0.2", "--gamma", "0.01"], "breadcrumbs_ties",
                         {"weight": 1.0, "density": 0.2, "gamma": 0.01}, {}, 1, 2),
    "slerp": (["--t", "0.3"], "slerp", {}, {"t": 0.3}, 1, 3),
    "model-stock": ([], "model_stock", {}, {}, 2, 2),
}


def specs_for(s: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, hd = s["hidden"], s["hidden"] // s["heads"]
    out = [("model.embed_tokens.weight", (s["vocab"], h))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (s["kv"] * hd, h)),
                (p + "self_attn.v_proj.weight", (s["kv"] * hd, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (s["inter"], h)),
                (p + "mlp.up_proj.weight", (s["inter"], h)),
                (p + "mlp.down_proj.weight", (h, s["inter"]))]
    out.append(("model.norm.weight", (h,)))
    return out


def write_config(folder: Path, s: dict) -> None:
    """A config complete enough for mergekit, which reads the layer count and sizes from it
    (without them it assumes Llama defaults and asks for tensors that do not exist)."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "hidden_size": s["hidden"], "intermediate_size": s["inter"],
           "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
           "num_key_value_heads": s["kv"], "vocab_size": s["vocab"],
           "tie_word_embeddings": s["tied"], "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(cfg))


def make_checkpoint(folder: Path, shape: dict, seed: int, base: Path | None = None) -> None:
    """Random bf16 weights (a perturbation of `base` when given), streamed to disk."""
    folder.mkdir(parents=True)
    specs = [TensorSpec(n, torch.bfloat16, sh) for n, sh in specs_for(shape)]
    total = sum(s.nbytes for s in specs)
    writer = ShardWriter(folder, specs, shard_size=-(-total // shape["shards"]) + 1)
    g = torch.Generator().manual_seed(seed)
    for s in specs:
        t = torch.randn(s.shape, generator=g).mul_(0.02).to(torch.bfloat16)
        writer.write(s.name, t)
    writer.close()
    write_config(folder, shape)


COLD = False  # --cold: drop the page cache before every timed command


def drop_caches() -> None:
    """Write back dirty pages and empty the page cache (needs root), when --cold asks."""
    if not COLD:
        return
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise SystemExit(f"--cold needs root to write /proc/sys/vm/drop_caches: "
                         f"{e.strerror}") from None


def _floor(read: list[str], out_bytes: int, scratch: Path) -> float:
    """Wall seconds of `read` (a command) then writing `out_bytes` with fsync (dd)."""
    drop_caches()
    t = time.perf_counter()
    subprocess.run(read, stdout=subprocess.DEVNULL, check=True)
    mib = max(1, out_bytes // 2**20)
    subprocess.run(["dd", "if=/dev/zero", f"of={scratch}", "bs=1M", f"count={mib}",
                    "conv=fsync", "status=none"], check=True)
    wall = time.perf_counter() - t
    scratch.unlink()
    return wall


def io_floor(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    files = [str(f) for p in inputs for f in sorted(p.glob("*.safetensors"))]
    return _floor(["cat", *files], out_bytes, scratch)


# safebasin's own I/O with nothing computed: reads every tensor of the checkpoints in argv[2:]
# as a merge does (O_DIRECT and dropping what it read when they exceed memory), then writes
# the first checkpoint's tensors' worth of zeros into argv[1] through the merge's writer.
_ENGINE_IO = ("import math, sys; from pathlib import Path; "
              "from safebasin.checkpoint import Checkpoint, ShardWriter, TensorSpec; "
              "from safebasin.checkpoint.direct import wanted; "
              "from safebasin.checkpoint.writer import plan_shards; "
              "from safebasin.merge.stream import CHUNK_ELEMS, chunks_of, read_chunks; "
              "ins = [Checkpoint.open(p) for p in sys.argv[2:]]; b = ins[0]; "
              "big = wanted(sum(c.nbytes for c in ins)); "
              "cs = [c for n in b.names for c in chunks_of(n, math.prod(b.shape(n)))]; "
              "[None for _ in read_chunks(ins, cs, direct=big, drop=big)]; "
              "specs = [TensorSpec(n, b.dtype(n), b.shape(n)) for n in b.names]; "
              "out = Path(sys.argv[1]); out.mkdir(); "
              "w = ShardWriter(out, specs, shard_size=5 * 10**9, drop_behind=big); "
              "z = memoryview(bytearray(4 * CHUNK_ELEMS)); "
              "[w.write(s.name, z[:min(len(z), s.nbytes - i)]) "
              "for sh in plan_shards(specs, 5 * 10**9) for s in sh "
              "for i in range(0, s.nbytes, len(z))]; w.close()")


def engine_floor(inputs: list[Path], scratch: Path) -> float:
    """Wall seconds of safebasin's reader over every input then its writer over one output's
    bytes, nothing computed (a Python process that imports torch, as a merge's does). Where
    growing the page cache is slow (a VM after the cache was emptied), this is far below
    cat + dd, which let the cache grow."""
    drop_caches()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _ENGINE_IO, str(scratch), *map(str, inputs)],
                   check=True)
    wall = time.perf_counter() - t
    shutil.rmtree(scratch)
    return wall


# Runs argv[2:] and writes "status wall_s maxrss_kib" to argv[1]. A small process (no torch)
# starts the command: Linux counts the RSS of the process that execs a command into the
# command's peak, so a benchmark that generated 8B-shaped tensors itself would inflate it.
_LAUNCHER = ("import os, sys, time, subprocess; t = time.perf_counter(); "
             "p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
             "open(sys.argv[1], 'w').write(f'{s} {time.perf_counter() - t} {u.ru_maxrss}')")


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and the command's own peak RSS in MiB."""
    drop_caches()
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, report.name, *cmd], check=True)
        status, wall, rss = report.read().split()
    if int(status) != 0:
        raise SystemExit(f"command failed ({status}): {' '.join(cmd)}")
    return float(wall), int(rss) / 1024


def startup() -> float:
    """Wall seconds of a Python process that imports torch and does nothing: the part of every
    CLI merge that no merge engine can remove (interpreter start, torch import, exit)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - t


def warm(inputs: list[Path]) -> None:
    """Read every input once, untimed, so that the first timed run does not pay for the disk
    (unless they are larger than half the memory: then every run reads from the disk)."""
    files = [str(f) for p in inputs for f in sorted(p.glob("*.safetensors"))]
    if COLD or sum(os.path.getsize(f) for f in files) > os.sysconf("SC_PHYS_PAGES") * os.sysconf(
            "SC_PAGE_SIZE") // 2:
        return
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)


def load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def mergekit_cmd(exe: str, base: Path, ft: Path, root: Path, out: Path) -> list[str]:
    """task_arithmetic at weight 0.5 (= lerp at alpha 0.5), computed in bf16 as mergekit users
    usually run it. The synthetic checkpoints have no tokenizer: --no-copy-tokenizer."""
    cfg = root / "mergekit.yml"
    cfg.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                   f"  - model: {ft}\n    parameters:\n      weight: 0.5\ndtype: bfloat16\n")
    return [exe, str(cfg), str(out), "--no-lazy-unpickle", "--no-copy-tokenizer", "--quiet"]


def mergekit_method_cmd(exe: str, method: str, base: Path, fts: list[Path], root: Path,
                        out: Path) -> list[str]:
    """The same merge as mergekit runs it, computing in bf16 (its usual setting)."""
    _, name, per_model, global_, _, _ = METHODS[method]
    models = "".join(f"  - model: {f}\n" + (f"    parameters: {json.dumps(per_model)}\n"
                                            if per_model else "") for f in fts)
    cfg = root / f"mergekit-{method}.yml"
    cfg.write_text(f"merge_method: {name}\nbase_model: {base}\nmodels:\n  - model: {base}\n"
                   f"{models}parameters: {json.dumps(global_)}\ndtype: bfloat16\n")
    return [exe, str(cfg), str(out), "--no-lazy-unpickle", "--no-copy-tokenizer", "--quiet",
            "--no-write-model-card"]


def bench_methods(name: str, work: Path, runs: int, mergekit: str | None,
                  methods: list[str]) -> None:
    """Each non-linear method against the floor of its own inputs, mergekit beside it."""
    root = work / name
    # only as many checkpoints as the methods merge: three full 8B inputs fill a small disk
    cks = [root / f"ckpt{i}" for i in range(1 + max(METHODS[m][4] for m in methods))]
    for i, c in enumerate(cks):
        if not c.exists():
            make_checkpoint(c, SHAPES[name], seed=i)
    nbytes = sum(f.stat().st_size for f in cks[0].glob("*.safetensors"))
    out, mk_out = root / "out", root / "mk_out"
    sb = [sys.executable, "-m", "safebasin", "merge"]
    print(f"{name}: non-linear methods ({load()})")
    for method in methods:
        args, _, _, _, k, passes = METHODS[method]
        inputs = cks[: k + 1]
        warm(inputs)
        floors, efloors, walls, mks = [], [], [], []
        for _ in range(runs):
            shutil.rmtree(out, ignore_errors=True)  # before the floor's scratch file: disk
            floors.append(io_floor(inputs, nbytes, root / "dd.tmp"))
            if COLD:  # warm, its writes and deletes just before would slow the merge (see docs)
                efloors.append(engine_floor(inputs, root / "io.tmp"))
            walls.append(timed([*sb, method, *map(str, inputs), "-o", str(out), *args, "-q"]))
            if mergekit:
                shutil.rmtree(mk_out, ignore_errors=True)
                mks.append(timed(mergekit_method_cmd(mergekit, method, inputs[0], inputs[1:],
                                                     root, mk_out)))
        floor = statistics.median(floors)
        w = statistics.median(x for x, _ in walls)
        target = 1.2 if passes == 1 else 2.0
        verdict = "within" if w <= target * floor else "OVER"
        print(f"  I/O floor (read {k + 1}, write+fsync 1)            {floor:6.2f} s   "
              f"runs {fmt(floors)}")
        if efloors:
            print(row(f"safebasin I/O alone (read {k + 1}, write 1)", efloors, floor))
        against_io = (f"{w / statistics.median(efloors):.2f}x safebasin's I/O alone   "
                      if efloors else "")
        print(row(f"safebasin merge {method} ({passes}-pass)", [x for x, _ in walls], floor,
                  f"peak RSS {max(r for _, r in walls):.0f} MiB   {verdict} {target}x   "
                  f"{against_io}"))
        if mergekit:
            print(row(f"mergekit {METHODS[method][1]} (bf16)", [x for x, _ in mks], floor,
                      f"peak RSS {max(r for _, r in mks):.0f} MiB   "))
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(mk_out, ignore_errors=True)


def row(label: str, walls: list[float], floor: float, extra: str = "") -> str:
    w = statistics.median(walls)
    return (f"  {label:44s} {w:6.2f} s   ratio {w / floor:.2f}x   {extra}runs {fmt(walls)}")


def bench_pair(name: str, work: Path, runs: int, mergekit: str | None, ema_k: int) -> None:
    shape = SHAPES[name]
    root = work / name
    cks = [root / f"ckpt{i}" for i in range(max(2, ema_k + 1))]
    for i, c in enumerate(cks):
        if not c.exists():
            make_checkpoint(c, shape, seed=i)
        write_config(c, shape)  # also brings checkpoints kept in --workdir up to date
    base, ft = cks[0], cks[1]
    nbytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    out, mk_out = root / "out", root / "mk_out"
    sb = [sys.executable, "-m", "safebasin", "merge"]
    print(f"{name}: {nbytes / 1e9:.2f} GB per checkpoint ({load()})")
    warm(cks[: ema_k + 1] if ema_k else [base, ft])

    floors, starts, merges, mks = [], [], [], []
    for _ in range(runs):  # interleaved, so that drift hits all alike
        floors.append(io_floor([base, ft], nbytes, root / "dd.tmp"))
        starts.append(startup())
        shutil.rmtree(out, ignore_errors=True)
        merges.append(timed([*sb, "lerp", str(base), str(ft), "-o", str(out), "--alpha", "0.5",
                             "-q"]))
        if mergekit:
            shutil.rmtree(mk_out, ignore_errors=True)
            mks.append(timed(mergekit_cmd(mergekit, base, ft, root, mk_out)))
    floor = statistics.median(floors)
    walls = [w for w, _ in merges]
    print(f"  I/O floor (read 2 inputs, write+fsync 1)     {floor:6.2f} s   runs {fmt(floors)}")
    print(row("python -c 'import torch' (no work)", starts, floor))
    print(row("safebasin merge lerp", walls, floor,
              f"{2 * nbytes / statistics.median(walls) / 1e9:.2f} GB/s in   "
              f"peak RSS {max(r for _, r in merges):.0f} MiB   "))
    if mergekit:
        print(row("mergekit task_arithmetic", [w for w, _ in mks], floor,
                  f"peak RSS {max(r for _, r in mks):.0f} MiB   "))
    if ema_k:
        inputs = cks[: ema_k + 1]
        efloors, emas = [], []
        for _ in range(runs):
            efloors.append(io_floor(inputs, nbytes, root / "dd.tmp"))
            shutil.rmtree(out, ignore_errors=True)
            emas.append(timed([*sb, "ema", str(base), *map(str, inputs[1:]), "-o", str(out),
                               "--eta", "0.25", "-q"]))
        ef = statistics.median(efloors)
        print(f"  I/O floor (read {ema_k + 1} inputs, write+fsync 1)     {ef:6.2f} s   "
              f"runs {fmt(efloors)}")
        print(row(f"safebasin merge ema (K={ema_k})", [w for w, _ in emas], ef,
                  f"{(ema_k + 1) * nbytes / statistics.median(w for w, _ in emas) / 1e9:.2f} "
                  f"GB/s in   peak RSS {max(r for _, r in emas):.0f} MiB   "))
    print(f"  ({load()})")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(mk_out, ignore_errors=True)


def fmt(xs) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated checkpoints")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="135M shapes only")
    ap.add_argument("--ema-k", type=int, default=4)
    ap.add_argument("--mergekit", help="path to a mergekit-yaml executable (own venv)")
    ap.add_argument("--shapes", help=f"comma-separated subset of {', '.join(SHAPES)}")
    ap.add_argument("--methods", default="",
                    help=f"non-linear methods to time, comma-separated, or all: "
                         f"{', '.join(METHODS)}")
    ap.add_argument("--no-lerp", action="store_true", help="skip the lerp/EMA section")
    ap.add_argument("--layers", type=int, help="keep only this many decoder layers of each "
                    "shape (tensor shapes unchanged)")
    ap.add_argument("--cold", action="store_true", help="empty the page cache before every "
                    "timed command (root only)")
    args = ap.parse_args()
    global COLD
    COLD = args.cold
    drop_caches()  # refuse now, not after generating checkpoints
    methods = list(METHODS) if args.methods == "all" else [
        m for m in args.methods.split(",") if m]
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}, "
          f"python {platform.python_version()}, torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; page cache "
          f"{'dropped before every timed command' if COLD else 'warm'}; "
          f"SAFEBASIN_DIRECT_IO={os.environ.get('SAFEBASIN_DIRECT_IO', '') or 'auto'}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="safebasin-bench-"))
    try:
        names = ["smollm2-135m"] if args.quick else ["smollm2-135m", "llama-3.2-1b"]
        names = args.shapes.split(",") if args.shapes else names
        if args.layers:
            for name in names:
                SHAPES[f"{name}-{args.layers}l"] = {**SHAPES[name], "layers": args.layers}
            names = [f"{name}-{args.layers}l" for name in names]
        for name in names:
            if not args.no_lerp:
                bench_pair(name, work, args.runs, args.mergekit,
                           args.ema_k if (name != "smollm2-135m" or args.quick) else 0)
            if methods:
                bench_methods(name, work, args.runs, args.mergekit, methods)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
