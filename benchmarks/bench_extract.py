"""Time and memory of QK extraction against a plain forward pass.

Modes, for each model, prompt length and batch size:

- ``plain``: ``model(input_ids, attention_mask)`` with the model's own sdpa attention, full
  logits ``[B, T, vocab]`` and the default KV cache (what a user would otherwise run);
- ``plain_last`` (optional): the same with ``logits_to_keep=1``, a forward that, like
  extraction, does not project every position onto the vocabulary;
- ``prerope`` / ``rope``: ``qkscore.extraction.extract`` with ``rope=False`` / ``rope=True``,
  16 (query, key) pairs per row and two candidate tokens' log-probs at the last position.

Peer modes (optional, ``pip install "qkscore[bench]"`` for the last two): the ways people get
query/key vectors today, on the same weights and the same prompts. They keep what those tools
keep, every layer's queries and keys at every position (TransformerLens and nnsight) or every
layer's attention weights; qkscore keeps only the (query, key) positions it was asked for.
Each is called under ``torch.inference_mode()`` and with full logits, like ``plain``:

- ``eager_attn``: the model itself switched to eager attention
  (``set_attn_implementation("eager")``) and called with ``output_attentions=True``:
  ``[B, heads, T, T]`` weights per layer (transformers' way; sdpa cannot return them);
- ``tlens``: TransformerLens 4's ``TransformerBridge`` (the recommended API since 4.0 removed
  ``HookedTransformer.from_pretrained``), booted once per worker with
  ``TransformerBridge.boot_transformers(<hub name>, hf_model=..., tokenizer=..., dtype=...)``:
  no download, it wraps the loaded model. Timed: ``run_with_cache(input_ids, names_filter=``
  ``hook_q / hook_k)``, queries ``[B, T, heads, d_head]`` and keys ``[B, T, kv_heads, d_head]``
  per layer. The bridge switches its model to eager attention (so its pattern hooks fire);
- ``nnsight``: ``nnsight.TransformersModel(model, tokenizer=..., task="text-generation")``
  (``LanguageModel`` is its deprecated name since 0.8), built once; timed: one ``trace`` over
  ``input_ids`` saving every layer's ``q_proj`` and ``k_proj`` output (the modules
  ``lm.adapter`` names), ``[B, T, heads * d_head]``.

Both tools modify the module tree they are given in place (TransformerLens replaces the
layers with its bridge components and forces eager attention; nnsight wraps every module's
``forward``), so each gets its own copy of the model's modules sharing the very same weight
tensors (``copy.deepcopy`` with the parameters in the memo): no second copy of the weights,
and the other modes still run the untouched model. The warm-up call of every peer mode checks
the shapes, dtype and count of what it captured. A peer whose package is missing or that
fails gets an error row (its message below the table) instead of stopping the benchmark.

Prompts are real ProntoQA text (contexts joined until long enough, then truncated to exactly
the asked length; each batch row starts at another example), all rows the same length.

Each (model, length, batch) runs in a fresh subprocess: load the model, a 16-token warm-up of
every mode, then up to ``--repeats`` rounds of one full call per mode, the order rotated each
round so drifting load on a shared machine hits every mode alike. Rounds stop early once the
timed calls took ``--budget`` seconds per mode (at least one round). Time: the median wall
time, and the median CPU time of the process (``time.process_time``), which other jobs on a
shared machine disturb far less than wall time (on one thread it is the work done; on a GPU
it is only the host's share).

Peak memory (CPU): a second fresh worker per (model, length, batch), after the same warm-up,
runs one untimed call per mode. Linux keeps the process's resident high-water mark (VmHWM in
/proc/self/status), and writing ``5`` to /proc/self/clear_refs resets it to the current RSS;
before each call the worker returns malloc's free memory to the system (``malloc_trim``),
resets the mark and reads VmRSS, and reports ``VmHWM - VmRSS`` after it: model weights
excluded; activations, logits, KV cache and captured vectors included. That worker starts
with glibc's ``MALLOC_MMAP_THRESHOLD_=65536``: by default glibc raises the threshold after
large frees, later large buffers then come from the heap, small live tensors between them keep
freed space from going back, and peaks came out up to 2x too high and changed from run to run.
With the threshold fixed each large buffer is its own mapping, returned on free, and the CPU
peaks match the GPU allocator's for the same shapes (SmolLM2, 1024 tokens x 8,
plain/plain_last/prerope/rope: 962/290/122/122 MB here, 958/289/121/121 MB on an H200). The
timing worker keeps glibc's default, which is what users get (a fixed threshold slows the
plain pass most, by page faults on its large logits). Where clear_refs is not writable the
growth of ``ru_maxrss`` is reported instead, a lower bound (the table says so). On a GPU
(``--device cuda``) memory is the allocator's peak during the first timed call.

Threads default to 1: on a small machine shared with other jobs, torch's spinning OpenMP
threads contend and a two-thread forward can take several times longer than on one thread.
``--threads 0`` keeps torch's default.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRONTOQA = "prontoqa/truefalse_0shot/1hop_0shot_random.json"
MODES = ("plain", "plain_last", "prerope", "rope", "eager_attn", "tlens", "nnsight")
PEER_MODES = ("eager_attn", "tlens", "nnsight")
# built once per worker around a copy of the model's modules (see the module docstring)
BUILT_PEERS = ("tlens", "nnsight")
BENCH_EXTRA = 'pip install "qkscore[bench]"'
N_PAIRS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    parser.add_argument("--lengths", default="256,1024", help="prompt lengths in tokens")
    parser.add_argument("--batches", default="1,8", help="batch sizes")
    parser.add_argument("--modes", default="plain,prerope,rope", help=f"of {', '.join(MODES)}")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of full calls at most")
    parser.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="stop repeating once the calls took this many seconds per mode (one round at least)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch default")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (memory: allocator peak)")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="build each model from its config with random weights (--models may then name "
        "folders holding only config and tokenizer files): same shapes, same cost",
    )
    parser.add_argument(
        "--cases",
        default="",
        help="explicit length x batch cases instead of the grid, e.g. '256x1,256x8,1024x1'",
    )
    parser.add_argument("--data", default=str(_default_data()), help="shared data folder")
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return

    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), flush=True)
    import torch

    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads "
        f"{args.threads or 'torch default'}, device {args.device}, dtype {args.dtype}, "
        f"{'random weights, ' if args.random_init else ''}load average at start "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    if args.cases:
        cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",") if c.strip()]
    else:
        cases = [
            (int(length), int(batch))
            for length in args.lengths.split(",")
            for batch in args.batches.split(",")
        ]
    results = []
    started = time.perf_counter()
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for length, batch in cases:
            spec = {
                "model": model,
                "length": length,
                "batch": batch,
                "modes": modes,
                "dtype": args.dtype,
                "repeats": args.repeats,
                "budget": args.budget,
                "threads": args.threads,
                "data": args.data,
                "device": args.device,
                "random_init": args.random_init,
            }
            for res in _spawn(spec):
                results.append(res)
                status = res.get("error") or (
                    f"{res['median_s']:.3f}s (n={len(res['times_s'])}), "
                    f"peak +{res['peak_mb']:.1f} MB"
                    + (f", built in {res['build_s']:.2f}s (untimed)" if "build_s" in res else "")
                )
                print(f"  {model} T={length} B={batch} {res['mode']}: {status}", flush=True)
    print(
        f"\nfinished in {time.perf_counter() - started:.0f} s, load average at end "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print(_table(results, modes))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _default_data() -> Path:
    return Path(os.environ.get("QKSCORE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _spawn(spec: dict) -> list[dict]:
    """Time the modes in one worker (glibc's default malloc, as users run), then, on CPU,
    measure their memory in another one started with a fixed mmap threshold."""
    results = _run_worker({**spec, "phase": "time"})
    if all("error" in r for r in results) or spec["device"].startswith("cuda"):
        return results
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    memory = _run_worker({**spec, "phase": "memory"}, env)
    for res, mem in zip(results, memory):
        if "error" in res:
            continue
        if "error" in mem:
            res["error"] = mem["error"]
        else:
            res["peak_mb"] = mem["peak_kb"] / 1024
            res["memory_method"] = "VmHWM" if mem["exact"] else "ru_maxrss"
    return results


def _run_worker(spec: dict, env: dict | None = None) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        error = f"{spec['phase']} worker failed (rc {proc.returncode}): {' | '.join(tail)}"
        base = {k: v for k, v in spec.items() if k not in ("modes", "phase")}
        return [{**base, "mode": mode, "error": error} for mode in spec["modes"]]
    return json.loads(lines[-1])


def _table(results: list[dict], modes: list[str]) -> str:
    head = (
        "| model | tokens | batch | mode | n | wall s | wall / plain | CPU s | CPU / plain "
        "| peak extra MB | memory / plain |"
    )
    lines = [head, "|" + "---|" * 11]
    notes = []
    base = {
        (r["model"], r["length"], r["batch"]): r
        for r in results
        if r["mode"] == "plain" and "error" not in r
    }
    for r in results:
        key = (r["model"], r["length"], r["batch"])
        if "error" in r:
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {r['mode']} | error |" + " |" * 6)
            note = f"- {r['mode']}: {r['error']}"
            if note not in notes:
                notes.append(note)
            continue
        b = base.get(key)
        t_ratio = f"{r['median_s'] / b['median_s']:.2f}x" if b else "-"
        c_ratio = f"{r['median_cpu_s'] / b['median_cpu_s']:.2f}x" if b else "-"
        m_ratio = f"{r['peak_mb'] / b['peak_mb']:.2f}x" if b and b["peak_mb"] > 0 else "-"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {r['mode']} | {len(r['times_s'])} "
            f"| {r['median_s']:.3f} | {t_ratio} | {r['median_cpu_s']:.3f} | {c_ratio} "
            f"| {r['peak_mb']:.1f}"
            f"{'' if r['memory_method'] != 'ru_maxrss' else ' (lower bound)'} | {m_ratio} |"
        )
    if notes:
        lines += ["", "errors:", *notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- worker process


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _trim_heap() -> None:
    """Hand memory that malloc keeps after frees (loading, warm-up) back to the system, so
    the measured call has to fault in what it uses instead of silently reusing it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _prompts(tokenizer, data: Path, length: int, batch: int) -> list[list[int]]:
    examples = json.loads((data / PRONTOQA).read_text())
    texts = [
        f"{ex['test_example']['question']} {ex['test_example']['query']}"
        for ex in examples.values()
    ]
    rows = []
    for row in range(batch):
        ids: list[int] = []
        i = row * 7  # each row starts at another example
        while len(ids) < length:
            ids += tokenizer(texts[i % len(texts)] + "\n", add_special_tokens=False)["input_ids"]
            i += 1
        rows.append(ids[:length])
    return rows


def _worker(spec: dict) -> list[dict]:
    """All modes of one (model, length, batch) in one process, in interleaved rounds."""
    import gc

    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from qkscore.extraction import extract
    from qkscore.models import load_model

    device = spec.get("device", "cpu")
    cuda = device.startswith("cuda")
    if spec.get("random_init"):
        lm = _random_model(spec["model"], spec["dtype"], device)
    else:
        lm = load_model(spec["model"], dtype=spec["dtype"], device=device)
    plain_attention = lm.model.config._attn_implementation
    length, batch, modes = spec["length"], spec["batch"], spec["modes"]
    tok = lm.tokenizer
    input_ids = torch.tensor(_prompts(tok, Path(spec["data"]), length, batch), device=device)
    mask = torch.ones_like(input_ids)
    keys = torch.linspace(0, length - 1, N_PAIRS).long().tolist()
    pairs = [[(length - 1, k) for k in keys]] * batch
    candidates = [
        tok(" True", add_special_tokens=False)["input_ids"][0],
        tok(" False", add_special_tokens=False)["input_ids"][0],
    ]

    # extraction switches the model to the capturing wrapper of its own attention; the plain
    # passes get the model's own attention back, eager_attn eager, and eager must not leak
    # into the qkscore modes (a round may run eager_attn just before them)
    from qkscore.extraction import CAPTURE_EAGER, CAPTURE_SDPA, _use_capture_attention

    qk_attention = {"sdpa": CAPTURE_SDPA, "eager": CAPTURE_EAGER}.get(plain_attention)

    def set_attention(name):
        if lm.model.config._attn_implementation != name:
            lm.model.set_attn_implementation(name)

    errors: dict[str, str] = {}
    peers = {}
    build_s: dict[str, float] = {}
    for mode in modes:
        if mode not in BUILT_PEERS:
            continue
        built = time.perf_counter()
        try:
            peers[mode] = _build_peer(mode, lm)
        except ImportError as exc:
            errors[mode] = f"{mode} needs the package {exc.name or exc}: {BENCH_EXTRA}"
        except Exception as exc:
            errors[mode] = f"{mode} could not be built: {type(exc).__name__}: {exc}"
        else:
            build_s[mode] = time.perf_counter() - built
            print(f"{mode}: built in {build_s[mode]:.2f} s", file=sys.stderr)

    def prepare(mode):
        """Set the attention each mode runs on, outside the timed call (switching walks the
        model: it would be timed for whichever mode follows another)."""
        if mode in peers:
            return
        if mode == "eager_attn":
            set_attention("eager")
        elif mode == "rope":
            if lm.model.config._attn_implementation != qk_attention:
                _use_capture_attention(lm.model)  # what extract(rope=True) switches to
        else:
            set_attention(plain_attention)

    def call(mode, ids, m, prs):
        prepare(mode)  # a no-op when the timing loop already prepared it
        if mode in ("plain", "plain_last", "eager_attn"):
            kwargs = {
                "plain": {},
                "plain_last": {"logits_to_keep": 1},
                "eager_attn": {"output_attentions": True},
            }[mode]
            with torch.inference_mode():
                out = lm.model(input_ids=ids, attention_mask=m, **kwargs)
            if mode == "eager_attn":
                first = out.attentions[0]
                return {"n": len(out.attentions), "attn": tuple(first.shape), "dtype": first.dtype}
            return out.logits.shape
        if mode in peers:
            return peers[mode](ids)  # all rows are full length: no mask needed
        return extract(lm, ids, m, prs, rope=(mode == "rope"), candidate_ids=candidates).scores

    warm = 16
    for mode in modes:
        if mode in errors:
            continue
        try:
            result = call(mode, input_ids[:, :warm], mask[:, :warm], [[(warm - 1, 0)]] * batch)
            if mode in PEER_MODES:
                _check_capture(mode, result, lm, batch, warm)
        except Exception as exc:
            if mode not in PEER_MODES:
                raise
            errors[mode] = f"{mode} failed: {type(exc).__name__}: {exc}"
    active = [mode for mode in modes if mode not in errors]
    times: dict[str, list[float]] = {mode: [] for mode in active}
    cpu_times: dict[str, list[float]] = {mode: [] for mode in active}
    peak_kb: dict[str, int] = {}
    exact = True
    if spec["phase"] == "memory":
        # one call per mode; this process started with a fixed mmap threshold (see _spawn)
        for mode in active:
            gc.collect()
            _trim_heap()
            exact = _reset_peak() and exact
            before_rss = _status_kb("VmRSS")
            before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            prepare(mode)
            result = call(mode, input_ids, mask, pairs)
            if exact:
                peak_kb[mode] = _status_kb("VmHWM") - before_rss
            else:
                peak_kb[mode] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max
            del result
        return [
            {"mode": mode, "error": errors[mode]}
            if mode in errors
            else {"mode": mode, "peak_kb": peak_kb[mode], "exact": exact}
            for mode in modes
        ]
    for round_no in range(spec["repeats"]):
        # rotate the order each round so no mode always runs first
        shift = round_no % max(len(active), 1)
        order = active[shift:] + active[:shift]
        for mode in order:
            gc.collect()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before_cuda = torch.cuda.memory_allocated()
            prepare(mode)
            start, start_cpu = time.perf_counter(), time.process_time()
            result = call(mode, input_ids, mask, pairs)
            if cuda:
                torch.cuda.synchronize()
                if round_no == 0:
                    peak_kb[mode] = (torch.cuda.max_memory_allocated() - before_cuda) // 1024
            times[mode].append(time.perf_counter() - start)
            cpu_times[mode].append(time.process_time() - start_cpu)
            del result
        if sum(sum(t) for t in times.values()) >= spec["budget"] * len(active):
            break
    base = {k: v for k, v in spec.items() if k not in ("modes", "phase")}
    return [
        {**base, "mode": mode, "error": errors[mode]}
        if mode in errors
        else {
            **base,
            "mode": mode,
            "times_s": times[mode],
            "median_s": statistics.median(times[mode]),
            "cpu_s": cpu_times[mode],
            "median_cpu_s": statistics.median(cpu_times[mode]),
            "peak_mb": peak_kb.get(mode, float("nan")) / 1024,
            "memory_method": "cuda" if cuda else None,
            "model_dtype": str(lm.dtype).removeprefix("torch."),
            **({"build_s": build_s[mode]} if mode in build_s else {}),
        }
        for mode in modes
    ]


# --------------------------------------------------------------------------- peer modes


def _shared_weights_copy(model):
    """The model's module tree copied with its parameters shared, not copied: for the tools
    that rewrite the modules they are given, so the other modes keep the untouched model.
    (Nothing here may change the weights in place: TransformerLens's compatibility mode, which
    folds layer norms into them, stays off.)"""
    return copy.deepcopy(model, {id(p): p for p in model.parameters()})


def _hub_name(lm) -> str:
    """The hub name of the loaded architecture, for TransformerLens's bookkeeping only: with
    ``hf_model=`` it downloads nothing."""
    from qkscore.models.aliases import get_alias

    packaged = get_alias(lm.name)
    if packaged is not None:
        return packaged.repo_id
    return getattr(lm.model.config, "_name_or_path", "") or lm.name


def _build_peer(mode: str, lm):
    """One peer tool around a shared-weights copy of ``lm.model``; returns its timed call,
    which keeps every layer's queries and keys at every position, as the tool does, and
    returns only a summary of them (count, first layer's shapes, dtype)."""
    import torch

    if mode == "tlens":
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            _hub_name(lm),
            hf_model=_shared_weights_copy(lm.model),
            tokenizer=copy.deepcopy(lm.tokenizer),
            dtype=lm.dtype,
            device=lm.device,
        )
        bridge.eval()

        def qk_hooks(name: str) -> bool:
            return name.endswith("hook_q") or name.endswith("hook_k")

        def run_tlens(ids):
            with torch.inference_mode():
                _logits, cache = bridge.run_with_cache(ids, names_filter=qk_hooks)
            q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
            return {"n": len(cache), "q": tuple(q.shape), "k": tuple(k.shape), "dtype": q.dtype}

        return run_tlens
    if mode == "nnsight":
        import nnsight

        model = _shared_weights_copy(lm.model)
        tokenizer = copy.deepcopy(lm.tokenizer)
        if hasattr(nnsight, "TransformersModel"):
            traced = nnsight.TransformersModel(model, tokenizer=tokenizer, task="text-generation")
        else:  # nnsight before 0.8
            traced = nnsight.LanguageModel(model, tokenizer=tokenizer)
        adapter = lm.adapter
        layers = functools.reduce(getattr, adapter.layers.split("."), traced)
        # q then k, the order the forward computes them (nnsight refuses reads out of order);
        # fused families (one qkv projection) save that projection once
        names = list(dict.fromkeys((adapter.q_module, adapter.k_module)))
        modules = []
        for i in range(lm.layout.n_layers):
            attention = getattr(layers[i], adapter.attention)
            modules += [getattr(attention, name) for name in names]

        def run_nnsight(ids):
            saved = []
            with torch.inference_mode(), traced.trace(ids):
                for module in modules:
                    saved.append(module.output.save())
            q, k = saved[0], saved[len(names) - 1]
            return {"n": len(saved), "q": tuple(q.shape), "k": tuple(k.shape), "dtype": q.dtype}

        return run_nnsight
    raise ValueError(f"no peer mode {mode!r}")


def _check_capture(mode: str, got: dict, lm, batch: int, length: int) -> None:
    """The warm-up call of a peer mode really captured what it should, in the model's dtype."""
    lay, b, t = lm.layout, batch, length
    h, kv, d = lay.n_heads, lay.n_kv_heads, lay.head_dim
    if mode == "eager_attn":
        want = {"n": lay.n_layers, "attn": (b, h, t, t)}
    elif mode == "tlens":
        want = {"n": 2 * lay.n_layers, "q": (b, t, h, d), "k": (b, t, kv, d)}
    elif lm.adapter.fused != "none":
        want = {"n": lay.n_layers}
    else:
        shapes = {
            "flat": ((b, t, h * d), (b, t, kv * d)),
            "bthd": ((b, t, h, d), (b, t, kv, d)),
            "bhtd": ((b, h, t, d), (b, kv, t, d)),
        }[lm.adapter.layout]
        want = {"n": 2 * lay.n_layers, "q": shapes[0], "k": shapes[1]}
    want["dtype"] = lm.dtype
    wrong = {key: (got.get(key), value) for key, value in want.items() if got.get(key) != value}
    if wrong:
        raise AssertionError(
            f"{mode} captured something else than expected: "
            + ", ".join(f"{key} {g} (expected {w})" for key, (g, w) in wrong.items())
        )


def _random_model(name: str, dtype: str, device: str):
    """The model's architecture with random weights: config and tokenizer of an alias or a
    folder, no weight file needed (timing and memory do not depend on the values)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from qkscore.models import LoadedModel
    from qkscore.models.aliases import get_alias
    from qkscore.models.loading import resolve_dtype

    packaged = get_alias(name)
    folder = str(packaged.converted_dir()) if packaged else name
    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # a GGUF conversion's leftover: weights here are dense
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):  # initialise in place: random init on CPU is slow
        model = AutoModelForCausalLM.from_config(
            config, dtype=resolve_dtype(dtype, device), attn_implementation="sdpa"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel.from_model(model.to(device), tokenizer, name=name)


if __name__ == "__main__":
    main()
