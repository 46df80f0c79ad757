"""Load any causal LM (hub id, local folder, GGUF file or packaged alias) for QK extraction.

GGUF de-quantisation takes 20-60 s, so every GGUF source is converted once into a safetensors
folder in the cache; later loads read that folder in about a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qkscore.dtypes import dtype_name
from qkscore.models.adapters import (
    Adapter,
    HeadLayout,
    UnsupportedModelError,
    adapter_for,
    head_layout,
    supported_model_types,
)
from qkscore.models.aliases import (
    ALIASES,
    ModelNotAvailableError,
    PackagedModel,
    cache_dir,
    close_aliases,
    get_alias,
    sha256_file,
)

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass
class LoadedModel:
    """A model ready for extraction: the transformers model, its tokenizer and head geometry.

    ``source`` records where the weights came from (alias, file hash, hub revision) so run
    folders and profiles can refuse to mix models; ``fingerprint`` is a short stable id of the
    weights themselves.
    """

    model: Any
    tokenizer: Any
    name: str
    adapter: Adapter
    layout: HeadLayout
    source: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def n_layers(self) -> int:
        return self.layout.n_layers

    @property
    def n_heads(self) -> int:
        return self.layout.n_heads

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the hidden-state probe's features per position)."""
        return int(_text_config(self.model.config).hidden_size)

    @property
    def max_positions(self) -> int | None:
        """The longest token sequence the model's positions cover (its config's
        ``max_position_embeddings``, ``n_positions`` in GPT-2 style configs), or None when the
        config does not say."""
        config = _text_config(self.model.config)
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any = None,
        name: str | None = None,
        fingerprint: str | None = None,
    ) -> LoadedModel:
        """Wrap a transformers causal LM already in memory (fine-tuned, patched, built from a
        config) for extraction. The model is put in eval mode and a tokenizer without a pad
        token gets one.

        ``name`` defaults to the model's ``name_or_path``; ``fingerprint`` defaults to a hash
        of the config and a sample of every parameter (names, shapes, first values), so a
        profile calibrated on this model refuses another one. A profile made from
        :func:`load_model` records the file's fingerprint instead: pass that one (the
        profile's ``model.fingerprint``) to judge with the same weights loaded by hand.
        """
        adapter = adapter_for(model)  # an unsupported family is refused here, by name
        config = _text_config(model.config)
        model.eval()
        return cls(
            model=model,
            tokenizer=None if tokenizer is None else _with_padding(tokenizer),
            name=name or str(getattr(model.config, "name_or_path", "") or type(model).__name__),
            adapter=adapter,
            layout=head_layout(config),
            source={"kind": "memory", "class": type(model).__name__},
            fingerprint=fingerprint if fingerprint is not None else _fingerprint_params(model),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "family": self.adapter.family,
            "class": type(self.model).__name__,
            "dtype": dtype_name(self.dtype),
            "device": str(self.device),
            "n_layers": self.layout.n_layers,
            "n_heads": self.layout.n_heads,
            "n_kv_heads": self.layout.n_kv_heads,
            "head_dim": self.layout.head_dim,
            "source": self.source,
        }


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``auto`` is bfloat16 (float16 on GPUs without bf16).

    On the 2-core x86 CPU used for development bf16 scans about 1.9x faster than float32
    (benchmarks/bench_dtype.py, which also reports how often the chosen head's verdicts agree
    between the two); on GPUs it halves memory and runs on tensor cores. Pass
    ``dtype="float32"`` for bit-level comparisons.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    key = dtype.lower()
    if key == "auto":
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if key not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return device


def load_tokenizer(name_or_path: str):
    """The tokenizer alone (cheap: no weights are read for converted or hub models)."""
    folder, gguf, _ = _locate(name_or_path)
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf} if gguf else {}
    return _with_padding(AutoTokenizer.from_pretrained(folder, **kwargs))


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load a causal LM by packaged alias, hub id, local folder or ``.gguf`` file.

    ``device_map`` (e.g. ``"auto"``) hands placement to accelerate's big-model inference, for
    models larger than one device; ``device`` is then ignored.
    """
    folder, gguf, source = _locate(name_or_path)  # an unknown name fails here, offline, at once
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if gguf:
        kwargs["gguf_file"] = gguf
    if device_map is not None:
        kwargs["device_map"] = device_map
    _check_model_type(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    except OSError as err:
        raise _explain_os_error(name_or_path, err) from err
    if device_map is None:
        model.to(dev)
    model.eval()
    adapter = adapter_for(model)
    layout = head_layout(_text_config(model.config))
    fingerprint = _fingerprint_loaded(folder, source, model.config)
    return LoadedModel(
        model=model,
        tokenizer=_with_padding(tokenizer),
        name=name_or_path,
        adapter=adapter,
        layout=layout,
        source=source,
        fingerprint=fingerprint,
    )


def _check_model_type(folder: str) -> None:
    """Refuse a local model of an unknown family before reading its weights: transformers
    would otherwise fail with its own ValueError (unknown model_type, no causal-LM class)."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return  # a hub id: adapter_for checks the loaded model
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return  # let transformers report the unreadable config
    model_type = config.get("model_type")
    if model_type in supported_model_types():
        return
    classes = ", ".join(config.get("architectures") or []) or "the model"
    raise UnsupportedModelError(
        f"{classes} (model_type={model_type!r}, {config_file}) is not supported: qkscore knows "
        f"where queries and keys live for {', '.join(supported_model_types())}. "
        "Add a row to qkscore.models.adapters.ADAPTERS for a new family."
    )


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _with_padding(tokenizer):
    """Batched extraction pads; models without a pad token reuse EOS (masked out anyway)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _locate(name_or_path: str) -> tuple[str, str | None, dict[str, Any]]:
    """Resolve a name to (folder for from_pretrained, gguf file name or None, provenance)."""
    packaged = get_alias(name_or_path)
    if packaged is not None:
        folder = ensure_converted(packaged)
        return (
            str(folder),
            None,
            {
                "kind": "alias",
                "alias": packaged.alias,
                "repo_id": packaged.repo_id,
                "gguf": packaged.gguf_name,
                "sha256": packaged.sha256,
            },
        )
    path = Path(name_or_path).expanduser()
    if name_or_path.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelNotAvailableError(
                f"GGUF file {path} does not exist. Give the path to a .gguf file, a model "
                f"folder, a hub id, or one of the packaged aliases: {', '.join(ALIASES)}"
            )
        return (
            str(_convert_gguf_file(path)),
            None,
            {
                "kind": "gguf",
                "path": str(path.resolve()),
                "sha256": sha256_file(path),
            },
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(f"{path} is a folder but holds no config.json")
        return str(path), None, {"kind": "folder", "path": str(path.resolve())}
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"{name_or_path!r} is neither a model folder nor a .gguf file")
    _check_hub_name(name_or_path)
    return (
        name_or_path,
        None,
        {"kind": "hub", "repo_id": name_or_path, **_hub_revision(name_or_path)},
    )


#: ``owner/name``: the only form sent to the Hub (a plain name is answered offline).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
#: Seconds the one look-up of an uncached hub id may take (transformers would retry for ~30 s).
HUB_PROBE_TIMEOUT = 5.0


def _check_hub_name(name: str) -> None:
    """Refuse at once a name the Hub cannot serve, before transformers tries it with retries.

    A name in the local Hugging Face cache passes. Otherwise a plain name (no ``owner/``) is
    answered offline with the closest packaged aliases; under HF_HUB_OFFLINE an ``owner/name``
    id is refused with how to get it; online, one HEAD request with a short timeout and no
    retries checks that the id exists before any download.
    """
    if _hub_cached(name):
        return
    if not _HUB_ID.fullmatch(name):
        raise ModelNotAvailableError(_unknown_name_message(name))
    if _hub_offline():
        raise _explain_os_error(name, OSError("it is not in the local Hugging Face cache"))
    _probe_hub(name)


def _unknown_name_message(name: str) -> str:
    close = close_aliases(name)
    guess = f": did you mean {' or '.join(close)}?" if close else "."
    return (
        f"unknown model {name!r}{guess} It is not a packaged alias ({', '.join(ALIASES)}; see "
        "`qkscore models`), a model folder or a .gguf file here, nor a Hugging Face hub id "
        "(owner/name)."
    )


def _hub_cached(name: str) -> bool:
    """Whether the local Hugging Face cache holds ``name``'s config (offline, instant)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return False


def _hub_offline() -> bool:
    truthy = ("1", "true", "yes", "on")
    if any(
        os.environ.get(k, "").lower() in truthy for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _probe_hub(repo_id: str) -> None:
    """One HEAD request for ``repo_id``'s config.json, turned into one clear line on failure."""
    from huggingface_hub import errors, get_hf_file_metadata, hf_hub_url

    packaged = [m.alias for m in ALIASES.values() if m.repo_id.lower() == repo_id.lower()]
    offline_copy = (
        f" The packaged alias {packaged[0]} holds a quantised copy that loads offline."
        if packaged
        else ""
    )
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=HUB_PROBE_TIMEOUT)
    except errors.GatedRepoError:
        reason = "is gated on the Hugging Face Hub: accept its terms there and set HF_TOKEN"
    except errors.RepositoryNotFoundError:
        reason = (
            "is neither a folder here nor a model on the Hugging Face Hub (a private one needs "
            "HF_TOKEN)"
        )
    except errors.EntryNotFoundError:
        reason = "is a Hugging Face Hub repository without config.json, not a transformers model"
    except Exception as err:  # no network, DNS, proxy, timeout, server error: no retries
        detail = " ".join(str(err).split()) or type(err).__name__
        reason = (
            f"could not be looked up on the Hugging Face Hub ({type(err).__name__}: {detail}). "
            "Check the network, or set HF_HUB_OFFLINE=1 and use a cached model, a folder or a "
            ".gguf file"
        )
    else:
        return
    raise ModelNotAvailableError(f"model {repo_id!r} {reason}.{offline_copy}")


def _hub_revision(repo_id: str) -> dict[str, str]:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
        if isinstance(cached, str):
            return {"revision": Path(cached).parent.name}
    except Exception:  # provenance is best effort; loading reports real errors
        pass
    return {}


def _explain_os_error(name: str, err: OSError) -> ModelNotAvailableError:
    """Why a hub model could not be loaded, and the ways to get it (or an offline one)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    how = (
        "HF_HUB_OFFLINE is set and the model is not in the local cache. Download it on a "
        f"machine with network (`huggingface-cli download {name}`), copy the cache "
        "(~/.cache/huggingface) here, or pass a local folder or .gguf file."
        if offline
        else "Check the hub id and your network, or pass a local folder or .gguf file."
    )
    return ModelNotAvailableError(
        f"could not load model {name!r}: {err}\n{how}\nPackaged offline models: "
        f"{', '.join(ALIASES)} (see `qkscore models`)."
    )


def ensure_converted(packaged: PackagedModel) -> Path:
    """The packaged model as a safetensors folder, converting it on first use."""
    target = packaged.converted_dir()
    if (target / ".complete").exists():
        _strip_quantization_config(target)
        return target
    gguf = packaged.gguf_file()
    log.info("converting %s once to %s (GGUF de-quantisation, 20-60 s)", packaged.alias, target)
    _convert(gguf, target)
    return target


def _convert_gguf_file(path: Path) -> Path:
    """Convert an arbitrary GGUF once, keyed by its path, size and mtime (hashing is slow)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = cache_dir() / "models" / f"gguf-{path.stem}-{key.hexdigest()[:12]}"
    if not (target / ".complete").exists():
        _convert(path, target)
    _strip_quantization_config(target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """De-quantise into float32 safetensors, written to a temp folder and renamed into place
    so an interrupted conversion is never mistaken for a finished one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as err:
        raise ModelNotAvailableError(f"could not read GGUF file {gguf}: {err}") from err
    model.hf_quantizer = None  # the weights are de-quantised; save them as plain tensors
    # A kept `quantization_config` makes transformers re-pack the dense weights on every later
    # load and run each matmul through the GGUF kernels (several times slower on CPU).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(json.dumps({"gguf": str(gguf)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _strip_quantization_config(folder: Path) -> None:
    """Repair folders converted before the config was cleaned (idempotent, cheap)."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if "quantization_config" in config:
        del config["quantization_config"]
        config_path.write_text(json.dumps(config, indent=2))


#: Weight files the fingerprint reads, at the top of a model folder.
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
#: Files up to this size are hashed whole; larger ones are sampled (see ``_file_digest``).
_HASH_WHOLE = 32 << 20
_EDGE, _BLOCK, _BLOCKS, _TENSOR_SAMPLE = 1 << 20, 1 << 16, 64, 1 << 12
_file_digests: dict[tuple, str] = {}


def model_fingerprint(name_or_path: str) -> str | None:
    """The fingerprint ``load_model`` gives this model, without loading it; ``None`` when that
    needs more than a cheap look (a hub id not in the local cache, a GGUF file to hash whole).

    Run folders use it to refuse a different model before spending the load."""
    packaged = get_alias(name_or_path)
    if packaged is not None:
        return packaged.sha256[:16]
    if name_or_path.lower().endswith(".gguf"):
        return None
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _fingerprint_folder(path) if (path / "config.json").is_file() else None
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        return None
    snapshot = _hub_snapshot(name_or_path)
    return _fingerprint_folder(snapshot) if snapshot is not None else None


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model (where from_pretrained read it), if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an invalid repo id and the like: the caller falls back
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _fingerprint_loaded(folder: str, source: dict[str, Any], config) -> str:
    """The fingerprint of a just-loaded model: the GGUF's hash for aliases and GGUF files, else
    the weights in its folder (for a hub id, the cached snapshot it was read from)."""
    if source.get("sha256"):
        return source["sha256"][:16]
    path = Path(folder) if source.get("kind") != "hub" else _hub_snapshot(folder)
    if path is not None and (path / "config.json").is_file():
        return _fingerprint_folder(path)
    # a hub model read from somewhere this process cannot see: only its config and revision
    log.warning("no weight files found for %s; its fingerprint covers only the config", folder)
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(json.dumps(source, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _fingerprint_params(model: Any, sample: int = 1024) -> str:
    """A short id of an in-memory model: its config and, per parameter, the name, shape and
    first ``sample`` values (as float32), cheap at any size."""
    digest = hashlib.sha256(b"qkscore memory fingerprint 1\n")
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for pname, p in model.named_parameters():
            head = p.detach().reshape(-1)[:sample].to("cpu", torch.float32).numpy()
            digest.update(f"\n{pname}:{tuple(p.shape)}:".encode() + head.tobytes())
    return digest.hexdigest()[:16]


def _fingerprint_folder(folder: str | Path) -> str:
    """A short id of a model folder's weights: its config.json and, per weight file, the name,
    size and content (whole up to 32 MiB; above that, samples that touch every tensor).

    Two fine-tunes with one config differ; the same files always give the same id. A hub
    snapshot's weight files are links to blobs named by the file's SHA-256, which is then
    hashed too, exact at no cost. Sampling reads a few MB however big the model is, so loading
    is not slowed (tests/test_models.py times it)."""
    path = Path(folder)
    config = json.loads((path / "config.json").read_text())
    digest = hashlib.sha256(b"qkscore fingerprint 2\n")
    digest.update(json.dumps(config, sort_keys=True).encode())
    files = sorted({f for pattern in _WEIGHT_PATTERNS for f in path.glob(pattern) if f.is_file()})
    for f in files:
        digest.update(f"\n{f.name}:{_file_digest(f)}".encode())
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """SHA-256 of one weight file's size and content or content samples, cached per process by
    (path, size, mtime, inode) so reloading the same model does not read it again."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key in _file_digests:
        return _file_digests[key]
    size = stat.st_size
    digest = hashlib.sha256(f"{size}".encode())
    blob = path.resolve().name if path.is_symlink() else ""
    if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
        digest.update(f"blob {blob}".encode())  # the hub cache names LFS blobs by their SHA-256
    with open(path, "rb") as fh:
        if size <= _HASH_WHOLE:
            while block := fh.read(1 << 22):
                digest.update(block)
        else:
            for offset, length in _sample_ranges(fh, path, size):
                fh.seek(offset)
                digest.update(fh.read(length))
    _file_digests[key] = digest.hexdigest()
    return _file_digests[key]


def _sample_ranges(fh, path: Path, size: int) -> list[tuple[int, int]]:
    """Byte ranges to hash in a large weight file: the first and last MiB, 64 evenly spaced
    64 KiB blocks and, for safetensors, the whole header plus the start, middle and end of every
    tensor's data, so an edit to any one tensor (a merged LoRA, a rank-one model edit) shows."""
    ranges = [(0, _EDGE), (max(0, size - _EDGE), _EDGE)]
    ranges += [(size * i // _BLOCKS, _BLOCK) for i in range(_BLOCKS)]
    if path.suffix == ".safetensors":
        try:
            header_len = int.from_bytes(fh.read(8), "little")
            if 0 < header_len <= min(size - 8, 100 << 20):  # the format caps it at 100 MB
                ranges.append((0, 8 + header_len))
                header = json.loads(fh.read(header_len))
                base = 8 + header_len
                for name in sorted(k for k in header if k != "__metadata__"):
                    begin, end = (base + int(x) for x in header[name]["data_offsets"])
                    length = min(_TENSOR_SAMPLE, end - begin)
                    ranges += [
                        (p, length) for p in (begin, (begin + end - length) // 2, end - length)
                    ]
        except (ValueError, KeyError, TypeError):
            pass  # not a readable header: the evenly spaced samples still cover the file
    return ranges
