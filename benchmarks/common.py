"""Shared pieces of the benchmark scripts.

Presets; our model and Hugging Face's on identical shapes; one full training step (forward, loss, backward,
AdamW); a harness that runs every case in its own worker process and times them interleaved; Markdown tables;
and the log ``docs/benchmarks.md`` each script appends its section to.

Why a process per case: each case gets its own allocator state, its own torch.compile caches (no recompile
limits or dynamic-shape surprises from another case's shapes) and its own memory; the parent then asks the
workers for one timed step each, round after round, rotating the order, so drift on a shared machine hits
every case alike. Only ratios measured in the same run (the same group) are meaningful. A live worker holds
about 1 GiB at the tiny preset, so scripts run their cases in groups of at most ~8 workers (``run_cases`` once
per group), each group carrying its own baseline (and peak) cases to divide by.

Clock: with one torch thread (the default: on a 2-core machine where other jobs run, one intra-op thread is
faster and far steadier than two) steps are timed in process CPU seconds, which a busy neighbour does not
inflate by descheduling us; with more threads, in wall seconds. Either way the peak (the MFU denominator) is
timed with the same clock in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Each section is appended by one run of a script in `benchmarks/` (machine, command, medians, ratios).
Numbers are medians of interleaved repeats; compare only ratios measured in the same run. Other engineers
append their own sections: append, never rewrite.
"""


# ----- shapes and models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch_size: int
    vocab_size: int

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    def label(self) -> str:
        return (
            f"d_model {self.d_model}, {self.n_layers} layers, {self.n_heads} heads, seq {self.seq_len}, "
            f"batch {self.batch_size}, vocab {self.vocab_size}"
        )


TINY = Shape(d_model=256, n_layers=4, n_heads=4, seq_len=256, batch_size=16, vocab_size=4096)
D512 = Shape(d_model=512, n_layers=4, n_heads=4, seq_len=256, batch_size=16, vocab_size=4096)
# --quick: milliseconds per step, so a smoke test of every code path fits in seconds.
QUICK = Shape(d_model=64, n_layers=2, n_heads=2, seq_len=64, batch_size=4, vocab_size=512)


def our_config(shape: Shape, **axes: Any) -> dict[str, Any]:
    """ModelConfig fields of our model in the architecture of HF's OlmoForCausalLM (unless ``axes`` say
    otherwise): RoPE, SwiGLU, fused-QKV sequential block, non-affine LayerNorm, no biases, no dropout, untied
    head (HF's default ``tie_word_embeddings=False``)."""
    cfg: dict[str, Any] = dict(
        d_model=shape.d_model, n_heads=shape.n_heads, n_layers=shape.n_layers,
        max_sequence_length=shape.seq_len, vocab_size=shape.vocab_size,
        positional="rope", block_type="sequential", activation_type="swiglu", attention_backend="sdpa",
        layer_norm_type="default", layer_norm_with_affine=False, include_bias=False,
        attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0, weight_tying=False,
        eos_token_id=0, pad_token_id=0,
    )
    cfg.update(axes)
    return cfg


def llama_twin(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our config in HF Llama's architecture: separate q/k/v projections and affine RMSNorm."""
    return {**cfg, "block_type": "llama", "layer_norm_type": "rms", "layer_norm_with_affine": True}


def model_config(cfg: dict[str, Any]):
    from olmo.config import ModelConfig

    return ModelConfig(**cfg)


def flops_per_step(cfg: dict[str, Any], shape: Shape) -> int:
    """The platform's convention (olmo.nn.flops: 6N + 12·L·H·Q·T per token), the same for every model on the
    same shapes."""
    from olmo.nn.flops import flops_per_token

    return shape.tokens * flops_per_token(model_config(cfg), shape.seq_len).total


def build_model(kind: str, cfg: dict[str, Any], seed: int = 0):
    """``ours`` (olmo.nn.OLMo), ``hf_olmo`` (transformers.OlmoForCausalLM) or ``hf_llama``
    (LlamaForCausalLM) on the shapes of ``cfg``, random weights."""
    import torch

    c = model_config(cfg)
    torch.manual_seed(seed)
    if kind == "ours":
        return c.build()
    import transformers

    common = dict(
        vocab_size=c.padded_embedding_size, hidden_size=c.d_model,
        intermediate_size=int(c.mlp_width * 0.5),  # our ff_proj holds SwiGLU's up and gate halves
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.effective_n_kv_heads,
        max_position_embeddings=c.max_sequence_length, attention_bias=False, attention_dropout=0.0,
        tie_word_embeddings=c.weight_tying, pad_token_id=0, bos_token_id=0, eos_token_id=0, use_cache=False,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, attn_implementation="sdpa",
    )
    if kind == "hf_olmo":
        hf_cfg = transformers.OlmoConfig(**common)
        model_cls = transformers.OlmoForCausalLM
    elif kind == "hf_llama":
        hf_cfg = transformers.LlamaConfig(**common, rms_norm_eps=c.layer_norm_eps, mlp_bias=False)
        model_cls = transformers.LlamaForCausalLM
    else:
        raise ValueError(f"unknown model {kind!r}")
    return model_cls(hf_cfg)


def compile_model(model) -> None:
    """Compile each transformer block in place, as ``olmo.distributed.parallelize`` does for train.compile;
    HF models get the same granularity (each decoder layer), so neither side's head or loss is compiled."""
    if hasattr(model, "blocks"):  # ours
        from olmo.config.train import DistributedConfig, TrainConfig
        from olmo.distributed import parallelize

        parallelize(model, DistributedConfig(), TrainConfig(max_steps=1, compile=True), world_size=1)
    else:
        for layer in model.model.layers:
            layer.compile()


# ----- one training step -------------------------------------------------------------------------------


def autocast(precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision {precision!r}: only fp32 and bf16 (fp16 is ~200x slower on CPU)")
    return contextlib.nullcontext()


def training_step(model, input_ids, precision: str, clip: float | None = None) -> Callable[[], None]:
    """One full step as the trainer takes it, without the trainer: forward (autocast), the trainer's loss
    (olmo.train.loss, per-token mean), backward, [grad clipping], the trainer's AdamW (olmo.train.optim:
    foreach, OLMo's parameter groups), zero_grad. The same function for our model and HF's."""
    import torch

    from olmo.config.train import OptimConfig
    from olmo.train.loss import next_token_loss
    from olmo.train.optim import build_optimizer

    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    params = [p for p in model.parameters() if p.requires_grad]
    n_targets = input_ids.shape[0] * (input_ids.shape[1] - 1)
    model.train()

    def step() -> None:
        with autocast(precision):
            logits = model(input_ids).logits
        ce, _ = next_token_loss(logits, input_ids)
        (ce / n_targets).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ----- cases and the worker processes -------------------------------------------------------------------


@dataclass
class Case:
    """One thing to time. kind: ``step`` (a bare training step of ``model``), ``trainer`` (one iteration of
    olmo.train.Trainer.fit on ``experiment``), ``matmul`` (``inner`` square matmuls of ``size``)."""

    name: str
    kind: str = "step"
    model: str = "ours"  # ours | hf_olmo | hf_llama
    config: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (HF models are derived from them)
    shape: Shape = TINY
    precision: str = "fp32"
    compile: bool = False
    malloc: str = "tuned"  # tuned (what the trainer does: olmo.train.host_memory) | default (glibc's)
    clip: float | None = None
    experiment: dict[str, Any] | None = None  # kind=trainer: ExperimentConfig.asdict()
    tracking: bool = False  # kind=trainer: through olmo.tracking.run_tracked (MLflow callback)
    size: int = 2048  # kind=matmul
    inner: int = 1  # kind=matmul: matmuls per timed call
    kernel: str = "aten"  # kind=matmul: aten (torch.mm) | onednn (olmo.nn.linear's fp32 CPU kernel)
    threads: int = 1
    warmup: int = 1
    flops: float = 0.0  # per timed call (0 = not a FLOP rate)

    @property
    def clock(self) -> str:
        return "cpu" if self.threads == 1 else "wall"

    def spec(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["shape"] = asdict(self.shape)
        return d


@dataclass
class Timing:
    case: Case
    wall: list[float]
    cpu: list[float]
    warmup_seconds: float
    info: dict[str, Any]

    @property
    def seconds(self) -> list[float]:
        return self.cpu if self.case.clock == "cpu" else self.wall

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        return spread(self.seconds)

    @property
    def flops_per_second(self) -> float:
        return self.case.flops / self.median

    @property
    def tokens_per_second(self) -> float:
        return self.case.shape.tokens / self.median


def spread(values: Sequence[float]) -> float:
    """Half the interquartile range relative to the median (a robust noise figure): 0.03 = ±3 %."""
    if len(values) < 4:
        return (max(values) - min(values)) / (2 * statistics.median(values))
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / (2 * statistics.median(values))


class Worker:
    def __init__(self, case: Case, log_dir: Path) -> None:
        self.case = case
        self.stderr_path = log_dir / f"worker-{len(list(log_dir.iterdir()))}.log"
        self._stderr = self.stderr_path.open("w")
        env = {**os.environ, "OMP_NUM_THREADS": str(case.threads), "PYTHONUNBUFFERED": "1"}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Inductor compiles in-process instead of keeping a pool of compile workers alive per case (memory).
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env, cwd=ROOT,
        )
        self.send(case.spec())

    def send(self, message: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except OSError as e:  # the worker is gone
            raise self._died() from e

    def _died(self) -> RuntimeError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        tail = self.stderr_path.read_text()[-3000:]
        hint = " (SIGKILL: out of memory? run fewer cases at once)" if self.proc.returncode == -9 else ""
        return RuntimeError(f"worker {self.case.name!r} exited ({self.proc.returncode}){hint}:\n{tail}")

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise self._died()
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.case.name!r} failed: {reply['error']}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("quit")
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def run_cases(
    cases: Sequence[Case], repeats: int, say: Callable[[str], None] | None = None, start_together: int = 3
) -> dict[str, Timing]:
    """Start one worker per case (``start_together`` at a time; each warms up: imports, builds, compiles, runs
    ``warmup`` steps; nothing is timed yet), then ``repeats`` rounds in which every case times one step, the
    order rotating each round, while the other workers wait idle."""
    say = say or log
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be unique: {names}")
    workers: dict[str, Worker] = {}
    ready: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="olmo-bench-") as tmp:
        try:
            for i in range(0, len(cases), start_together):
                start = time.perf_counter()
                batch = cases[i : i + start_together]
                for case in batch:
                    workers[case.name] = Worker(case, Path(tmp))
                for case in batch:
                    ready[case.name] = workers[case.name].receive()
                say(f"  ready: {', '.join(c.name for c in batch)} ({time.perf_counter() - start:.0f} s)")
            wall: dict[str, list[float]] = {n: [] for n in names}
            cpu: dict[str, list[float]] = {n: [] for n in names}
            for r in range(repeats):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    workers[name].send("step")
                    reply = workers[name].receive()
                    wall[name].append(reply["wall"])
                    cpu[name].append(reply["cpu"])
                say(f"  round {r + 1}/{repeats} done")
        finally:
            for w in workers.values():
                w.close()
    return {
        c.name: Timing(c, wall[c.name], cpu[c.name], ready[c.name]["warmup_seconds"], ready[c.name].get("info", {}))
        for c in cases
    }


# ----- inside a worker ----------------------------------------------------------------------------------


def _worker_main() -> None:
    # The protocol owns stdout; anything else printed goes to stderr (the worker's log).
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    spec = json.loads(sys.stdin.readline())
    spec["shape"] = Shape(**spec["shape"])
    case = Case(**spec)

    def reply(message: dict[str, Any]) -> None:
        proto.write(json.dumps(message) + "\n")

    try:
        import torch

        torch.set_num_threads(case.threads)
        if case.malloc == "tuned" and case.kind != "trainer":  # the trainer tunes it itself, in fit()
            from olmo.train.host_memory import keep_freed_host_memory

            keep_freed_host_memory()
        if case.kind == "trainer":
            _trainer_worker(case, reply)
            return
        start = time.perf_counter()
        step, info = _build_step(case)
        for _ in range(case.warmup):
            step()
        reply({"ready": True, "warmup_seconds": time.perf_counter() - start, "info": info})
        for line in sys.stdin:
            if json.loads(line) != "step":
                break
            w, c = time.perf_counter(), time.process_time()
            step()
            reply({"wall": time.perf_counter() - w, "cpu": time.process_time() - c})
    except BaseException as e:  # report, so the parent names the case
        import traceback

        traceback.print_exc()
        reply({"error": f"{type(e).__name__}: {e}"})
        raise


def _build_step(case: Case) -> tuple[Callable[[], None], dict[str, Any]]:
    import torch

    if case.kind == "matmul":
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case.precision]
        a = torch.randn(case.size, case.size, dtype=dtype)
        b = torch.randn(case.size, case.size, dtype=dtype)
        from olmo.nn.linear import matmul

        def matmuls() -> None:
            for _ in range(case.inner):
                matmul(a, b, case.kernel)

        return matmuls, {}
    if case.kind != "step":
        raise ValueError(f"unknown case kind {case.kind!r}")
    model = build_model(case.model, case.config)
    info = {"params": sum(p.numel() for p in model.parameters())}
    if case.compile:
        compile_model(model)
    vocab = model_config(case.config).vocab_size
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (case.shape.batch_size, case.shape.seq_len), generator=g)
    return training_step(model, input_ids, case.precision, case.clip), info


def _trainer_worker(case: Case, reply: Callable[[dict[str, Any]], None]) -> None:
    """Olmo's trainer with a gate as its last callback: the gate times each whole loop iteration (from the
    end of one iteration's callbacks to the end of the next one's) and waits for the parent in between."""
    from olmo.config import ExperimentConfig
    from olmo.train.callbacks import Callback

    class Gate(Callback):
        name = "benchmark_gate"

        def __init__(self) -> None:
            self.steps = 0
            self.start = time.perf_counter()
            self.mark: tuple[float, float] | None = None

        def on_step_end(self, trainer, metrics) -> None:
            self.steps += 1
            if self.steps < case.warmup:
                return
            if self.mark is None:
                reply({"ready": True, "warmup_seconds": time.perf_counter() - self.start,
                       "info": {"params": sum(p.numel() for p in trainer.model.parameters()),
                                "callbacks": [type(cb).__name__ for cb in trainer.callbacks]}})
            else:
                reply({"wall": time.perf_counter() - self.mark[0], "cpu": time.process_time() - self.mark[1]})
            if json.loads(sys.stdin.readline() or '"quit"') != "step":
                trainer.request_stop("benchmark_done")
            self.mark = (time.perf_counter(), time.process_time())

    cfg = ExperimentConfig.from_dict(case.experiment or {})
    if case.tracking:
        from olmo.tracking import JobContext, run_tracked

        with tempfile.TemporaryDirectory(prefix="olmo-bench-mlflow-") as results:
            run_tracked(cfg, JobContext(results_dir=results, force=True), callbacks=[Gate()])
    else:
        from olmo.train import run_experiment

        run_experiment(cfg, callbacks=[Gate()])


def matmul_case(name: str, precision: str, size: int, threads: int = 1, seconds: float = 0.3,
                kernel: str = "aten") -> Case:
    """A peak-FLOP/s case: enough ``size``³ matmuls per timed call to take about ``seconds``."""
    guess = {"fp32": 1e11, "bf16": 4e11}[precision]  # per thread; extra threads often add little on a shared box
    if kernel == "onednn":
        guess *= 2.4
    inner = max(1, round(seconds * guess / (2 * size**3)))
    return Case(name, kind="matmul", precision=precision, size=size, inner=inner, threads=threads,
                flops=2.0 * size**3 * inner, warmup=2, kernel=kernel)


def peak_kernels(precision: str) -> list[str]:
    """The matmul kernels our linear layers may use in ``precision`` on this CPU (olmo.nn.linear)."""
    import torch

    from olmo.nn.linear import matmul_kernels

    return matmul_kernels(torch.float32 if precision == "fp32" else torch.bfloat16, "cpu")


def peak_cases(precision: str, size: int, threads: int = 1) -> list[Case]:
    """One peak case per kernel of ``precision``: MFU divides by the best of them (``best_peak``)."""
    return [matmul_case(f"peak {precision} {k}", precision, size, threads=threads, kernel=k)
            for k in peak_kernels(precision)]


def best_peak(timings: dict[str, Timing], cases: Sequence[Case]) -> Timing:
    """The fastest of the peak ``cases`` in ``timings``."""
    return max((timings[c.name] for c in cases if c.kind == "matmul"), key=lambda t: t.flops_per_second)


def trainer_experiment(shape: Shape, model: dict[str, Any], precision: str, compile: bool,
                       cache_dir: str | None) -> dict[str, Any]:
    """An ExperimentConfig (as a dict) training ``model`` on Shakespeare at ``shape`` with a BPE of the shape's
    vocabulary, no evaluation, no checkpoints, and a budget the benchmark never reaches."""
    model = {k: v for k, v in model.items() if k not in ("vocab_size", "eos_token_id", "pad_token_id")}
    return {
        "model": model,
        "data": {"cache_dir": cache_dir, "tokenizer": {"vocab_size": shape.vocab_size}},
        "train": {
            "global_batch_size": shape.batch_size, "seq_len": shape.seq_len, "max_steps": 1_000_000,
            "precision": precision, "compile": compile, "eval_interval": None, "eval_batches": 1,
            "peak_flops_per_second": 1e12,  # the benchmark computes MFU itself, against its own measured peak
            "export_final_model": False,
        },
    }


def prepared_model_config(experiment: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields the trainer will build for ``experiment`` (the data decides vocab and EOS)."""
    from olmo.config import ExperimentConfig
    from olmo.data import prepare_data
    from olmo.train.experiment import model_config_for_data

    cfg = ExperimentConfig.from_dict(experiment)
    data = prepare_data(cfg.data)
    return model_config_for_data(cfg, data.vocab_size, data.eos_token_id).asdict()


# ----- the command line and the report -----------------------------------------------------------------


def parse_args(description: str, add: Callable[[argparse.ArgumentParser], None] | None = None,
               default_repeats: tuple[int, int] = (7, 3)) -> argparse.Namespace:
    """Common options; ``default_repeats`` = (full, --quick)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats, no compile: a smoke test")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per case (default 1)")
    full, quick = default_repeats
    parser.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default {full}, --quick {quick})")
    parser.add_argument("--doc", type=Path, default=DOC, help="Markdown log to append to (docs/benchmarks.md)")
    parser.add_argument("--no-doc", action="store_true", help="print only; append nothing to the log")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    if add is not None:
        add(parser)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = default_repeats[1] if args.quick else default_repeats[0]
    return args


def machine(threads: int) -> dict[str, Any]:
    import torch

    cpu, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have]
                break
    try:
        import transformers

        hf = transformers.__version__
    except ImportError:
        hf = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "flags": flags, "torch": torch.__version__, "transformers": hf,
        "threads": threads, "clock": "process CPU time" if threads == 1 else "wall time",
        "load_avg_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(),
    }


def machine_line(m: dict[str, Any]) -> str:
    hf = f", transformers {m['transformers']}" if m.get("transformers") else ""
    return (
        f"{m['cpu']}, {m['cores']} cores ({', '.join(m['flags']) or 'no AVX-512'}), torch {m['torch']}{hf}; "
        f"{m['threads']} torch thread(s) per case, timed in {m['clock']}; load average {m['load_avg_1min']} at start"
    )


def command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(args: argparse.Namespace, title: str, body: str, results: dict[str, Any], started: float) -> None:
    """Print the section; append it to the Markdown log (unless --no-doc); write JSON (with --json)."""
    m = results.setdefault("machine", machine(args.threads))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    minutes = (time.perf_counter() - started) / 60
    section = (
        f"\n## {title} ({stamp}{', --quick' if args.quick else ''})\n\n"
        f"- Machine: {machine_line(m)}\n- Command: `{command_line()}` ({minutes:.1f} min, {args.repeats} "
        f"interleaved rounds)\n\n{body.strip()}\n"
    )
    print(section)
    if not args.no_doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        if not args.doc.exists() or not args.doc.read_text().strip():
            args.doc.write_text(DOC_HEADER)
        with args.doc.open("a") as f:
            f.write(section)
    if args.json is not None:
        results["command"] = command_line()
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
