"""Profiles: what calibration chose, stored as JSON that any later step can trust.

The file's layout is :class:`qkscore.schemas.ProfileModel` (``docs/schemas/profile.schema.json``):
saving and loading validate through it. ``Profile.data`` stays the plain dict (the readers,
the service and the report read it by key).

A profile pins the model (fingerprint), the template and the scoring settings it was made with;
judging an item with another model or template would silently mean nothing, so loaders of a
profile refuse such a mismatch with a clear error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qkscore.data.textio import read_text_file
from qkscore.estimators.ensemble import TopKEnsemble
from qkscore.estimators.heads import HeadSelector, parse_head_name
from qkscore.estimators.probe import HiddenStateProbe
from qkscore.estimators.protocol import Reader, SavedFieldError, reader_from_dict
from qkscore.io import json_digest
from qkscore.schemas import ProfileModel

#: How each saved baseline is restored (``baselines.NAME`` in the file).
BASELINES: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "model_margin": HeadSelector.from_dict,
    "hidden_probe": HiddenStateProbe.from_dict,
}


class ProfileMismatchError(RuntimeError):
    """A profile applied to a model, template or run it was not made for."""


def _restore(field: str, saved: Mapping[str, Any], load: Callable[[Mapping[str, Any]], Any]):
    """A saved estimator, restored; a bad field is named by its place in the profile."""
    try:
        return load(saved)
    except SavedFieldError as err:
        raise ValueError(f"field '{field}.{err.field}' {err.problem}") from None


class Profile:
    """A profile, checked and built once: ``Profile(data)`` (or :meth:`load`) validates the
    layout (:class:`~qkscore.schemas.ProfileModel`, kept as ``layout``), restores every saved
    reader and baseline and checks that they agree with each other, or refuses the profile
    naming the file and the field. ``data`` stays the plain dict (the service and the report
    read it by key); the readers are built here and nowhere else."""

    def __init__(self, data: dict[str, Any], path: str | Path | None = None) -> None:
        self.data = data
        self.path = None if path is None else Path(path)
        where = self.path or "profile"
        if not isinstance(data, dict):
            raise ValueError(f"{where}: not a qkscore profile (a JSON object is expected)")
        self.layout = ProfileModel.from_data(data, where)
        try:
            self._build()
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                f"{where}: field {err} missing or malformed: a corrupt profile"
            ) from None
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        p = Path(path)
        try:
            data = json.loads(read_text_file(p)[0])
        except FileNotFoundError:
            raise FileNotFoundError(f"profile {p} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}:{err.lineno}: not valid profile JSON ({err.msg})") from None
        return cls(data, p)

    def _build(self) -> None:
        """Restore the selector, the ensemble, the readers and the baselines, and refuse a
        profile that would judge wrongly: a head outside the calibrated geometry, fields that
        contradict the saved estimators, a chosen reader that is not saved."""
        data = self.data
        selector = _restore("selector", data["selector"], HeadSelector.from_dict)
        layer, head = self.head
        if not (0 <= layer < selector.n_layers_ and 0 <= head < selector.n_heads_):
            raise ValueError(
                f"head {data['head']} is outside the calibrated "
                f"{selector.n_layers_} layers x {selector.n_heads_} heads"
            )
        self._check_head_fields(selector)
        ens = data.get("ensemble")
        ensemble = _restore("ensemble", ens, TopKEnsemble.from_dict) if ens else None
        saved = data.get("readers")
        readers: dict[str, Reader]
        if saved:
            if "reader" not in data:
                raise ValueError(
                    "field 'reader' missing: the profile saves readers "
                    f"({', '.join(saved)}) but not which one judges"
                )
            readers = {k: _restore(f"readers.{k}", d, reader_from_dict) for k, d in saved.items()}
            if "head" in saved and saved["head"].get("head") != selector.head_name_:
                raise ValueError(
                    f"field 'readers.head' reads head {saved['head'].get('head')} but field "
                    f"'selector' chose {selector.head_name_}: the profile contradicts itself"
                )
        else:  # made before readers: the head (and the ensemble) only
            readers = {"head": selector, **({"ensemble": ensemble} if ensemble else {})}
        if self.reader_name not in readers:
            raise ValueError(f"reader {self.reader_name!r} is not among the saved readers")
        baselines = {
            name: _restore(f"baselines.{name}", d, BASELINES[name])
            for name, d in (data.get("baselines") or {}).items()
            if d and name in BASELINES
        }
        counts = data["calibration"]["label_counts"]
        if len(counts) < 2:
            raise ValueError(
                f"calibrated on one option only ({counts}): it cannot tell valid from invalid"
            )
        self._selector, self._ensemble = selector, ensemble
        self._readers, self._baselines = readers, baselines

    def _check_head_fields(self, selector: HeadSelector) -> None:
        """The top-level description of the single head (``head``, ``layer``, ``head_index``,
        ``sign``, ``threshold``) must be the saved selector's: the verdicts come from the
        selector, so a hand-edited ``head`` would name one head and judge with another."""
        chosen = selector.head_name_
        if self.data["head"] != chosen:
            raise ValueError(
                f"field 'head' is {self.data['head']!r} but the saved selector (field "
                f"'selector') judges with {chosen}: the profile contradicts itself (edited by "
                "hand?); calibrate again"
            )
        layer, head = selector.head_
        expected = {
            "layer": layer,
            "head_index": head,
            "sign": int(selector.sign_[layer, head]),
            "threshold": float(selector.threshold_[layer, head]),
        }
        for key, want in expected.items():
            got = self.data.get(key)
            if got is None:
                continue  # profiles made before the field existed
            number = isinstance(got, (int, float)) and not isinstance(got, bool)
            if not number or not math.isfinite(got):
                raise ValueError(f"field {key!r} is {got!r}: a finite number is expected")
            if key == "sign" and got not in (-1, 1):
                raise ValueError(f"field 'sign' is {got!r}: a head's sign is +1 or -1")
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(
                    f"field {key!r} is {got!r} but the saved selector's head {chosen} has "
                    f"{want!r}: the profile contradicts itself (edited by hand?)"
                )

    def save(self, path: str | Path) -> None:
        from qkscore.io import write_json

        self.path = Path(path)
        write_json(self.path, ProfileModel.checked(self.data, self.path))

    @property
    def head(self) -> tuple[int, int]:
        return parse_head_name(self.data["head"])

    @property
    def deepest_layer(self) -> int:
        """The deepest layer any stored head reads: judging can stop the pass there."""
        layers = [self.head[0]]
        ens = self.data.get("ensemble")
        if ens:
            layers += [parse_head_name(h)[0] for h in ens.get("heads", [])]
        return max(layers)

    @property
    def unit(self) -> str:
        """What the readers were calibrated on: ``"answer"`` (True/False items about a whole
        context; profiles made before steps) or ``"step"`` (chain-of-thought steps)."""
        return str(self.data.get("unit") or "answer")

    @property
    def reader_name(self) -> str:
        """The reader chosen at calibration (``head`` for profiles made before readers)."""
        return str(self.data.get("reader") or "head")

    def readers(self) -> dict[str, Reader]:
        """Every fitted reader, by name; profiles made before readers hold the head (and the
        ensemble) only."""
        return dict(self._readers)

    def reader(self) -> Reader:
        """The chosen reader, ready to predict."""
        return self._readers[self.reader_name]

    def baseline(self, name: str) -> Any:
        """A fitted baseline (``model_margin`` or ``hidden_probe``), or None."""
        return self._baselines.get(name)

    @property
    def fingerprint(self) -> str:
        return self.data["model"].get("fingerprint", "")

    @property
    def digest(self) -> str:
        """The profile's digest: its content as canonical JSON, hashed
        (:func:`qkscore.io.json_digest`); audit rows, the service, lm-eval results and the
        report name the profile by it."""
        return json_digest(self.data)

    def selector(self) -> HeadSelector:
        """The saved single head (field ``selector``): its ranking and geometry."""
        return self._selector

    def ensemble(self) -> TopKEnsemble | None:
        return self._ensemble

    def check_model(self, fingerprint: str, name: str = "") -> None:
        if self.fingerprint and fingerprint != self.fingerprint:
            raise ProfileMismatchError(
                f"profile {self.path or ''} was calibrated on model "
                f"{self.data['model'].get('name')!r} (fingerprint {self.fingerprint}); the model "
                f"{name!r} has fingerprint {fingerprint}. Calibrate a profile for this model."
            )

    def check_run(self, run_meta: dict[str, Any], run_path: str = "") -> None:
        """A run may be judged by this profile only with the same model, template and rope."""
        self.check_model(run_meta["model"].get("fingerprint", ""), run_meta["model"].get("name"))
        if run_meta.get("template") != self.data["template"]:
            raise ProfileMismatchError(
                f"run {run_path} used template {run_meta.get('template', {}).get('name')!r} "
                f"with other settings than the profile's "
                f"{self.data['template'].get('name')!r}: scores are not comparable"
            )
        if bool(run_meta.get("rope")) != bool(self.data.get("rope")):
            raise ProfileMismatchError(
                f"run {run_path} has rope={run_meta.get('rope')} but the profile "
                f"rope={self.data.get('rope')}"
            )
