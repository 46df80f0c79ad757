"""Profiles: what calibration chose, stored as JSON that any later step can trust.

The file's layout is :class:`qkscore.results.ProfileModel` (``docs/schemas/profile.schema.json``):
saving and loading validate through it. ``Profile.data`` stays the plain dict (the readers,
the service and the report read it by key).

A profile pins the model (fingerprint), the template and the scoring settings it was made with;
judging an item with another model or template would silently mean nothing, so loaders of a
profile refuse such a mismatch with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qkscore.data.textio import read_text_file
from qkscore.estimators.ensemble import TopKEnsemble
from qkscore.estimators.heads import HeadSelector, head_name, parse_head_name
from qkscore.estimators.readers import HiddenStateProbe, reader_from_dict
from qkscore.results import ProfileModel


def _check_selector(selector: HeadSelector, field: str) -> None:
    """A saved head selector's per-head signs are +1 or -1 and its thresholds and probability
    fit finite: a sign of 0 would make every margin 0 - threshold (one verdict for every item),
    a NaN threshold every margin NaN."""
    bad_sign = np.flatnonzero(~np.isin(selector.sign_, (-1, 1)))
    if bad_sign.size:
        layer, head = divmod(int(bad_sign[0]), selector.n_heads_)
        raise ValueError(
            f"field '{field}.sign' holds {int(selector.sign_[layer, head])} at "
            f"{head_name(layer, head)}: a head's sign is +1 or -1"
        )
    bad = np.flatnonzero(~np.isfinite(selector.threshold_))
    if bad.size:
        layer, head = divmod(int(bad[0]), selector.n_heads_)
        raise ValueError(
            f"field '{field}.thresholds' holds {selector.threshold_[layer, head]} at "
            f"{head_name(layer, head)}: thresholds are finite numbers"
        )
    proba = (selector.proba_coef_, selector.temperature_)
    if not all(v is None or math.isfinite(v) for v in proba):
        raise ValueError(f"field '{field}.proba' holds a non-finite number")


class ProfileMismatchError(RuntimeError):
    """A profile applied to a model, template or run it was not made for."""


@dataclass
class Profile:
    data: dict[str, Any]
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        p = Path(path)
        try:
            data = json.loads(read_text_file(p)[0])
        except FileNotFoundError:
            raise FileNotFoundError(f"profile {p} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}:{err.lineno}: not valid profile JSON ({err.msg})") from None
        if isinstance(data, dict):  # a non-object gets validate()'s message
            ProfileModel.from_data(data, p)
        profile = cls(data, p)
        profile.validate()
        return profile

    def validate(self) -> None:
        """Refuse a profile that would judge wrongly or crash later: missing fields, saved
        estimators that do not restore, a head outside the calibrated geometry."""
        where = self.path or "profile"
        if not isinstance(self.data, dict):
            raise ValueError(f"{where}: not a qkscore profile (a JSON object is expected)")
        for key in ("model", "template", "selector", "head", "calibration"):
            if key not in self.data:
                raise ValueError(f"{where}: field '{key}' missing: not a qkscore profile")
        try:
            selector = self.selector()
            layer, head = self.head
            if not (0 <= layer < selector.n_layers_ and 0 <= head < selector.n_heads_):
                raise ValueError(
                    f"head {self.data['head']} is outside the calibrated "
                    f"{selector.n_layers_} layers x {selector.n_heads_} heads"
                )
            _check_selector(selector, "selector")
            self._check_head_fields(selector)
            self.ensemble()
            readers = self.readers()
            if self.data.get("readers") and "reader" not in self.data:
                raise ValueError(
                    "field 'reader' missing: the profile saves readers "
                    f"({', '.join(readers)}) but not which one judges"
                )
            if isinstance(readers.get("head"), HeadSelector):
                _check_selector(readers["head"], "readers.head")
                if readers["head"].head_name_ != selector.head_name_:
                    raise ValueError(
                        f"field 'readers.head' reads head {readers['head'].head_name_} but field "
                        f"'selector' chose {selector.head_name_}: the profile contradicts itself"
                    )
            for name in ("model_margin", "hidden_probe"):
                fitted = self.baseline(name)
                if isinstance(fitted, HeadSelector):
                    _check_selector(fitted, f"baselines.{name}")
            if self.reader_name not in readers:
                raise ValueError(f"reader {self.reader_name!r} is not among the saved readers")
            counts = self.data["calibration"]["label_counts"]
            if len(counts) < 2:
                raise ValueError(
                    f"calibrated on one option only ({counts}): it cannot tell valid from invalid"
                )
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(
                f"{where}: field {err} missing or malformed: a corrupt profile"
            ) from None
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

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

    def readers(self) -> dict[str, Any]:
        """Every fitted reader, by name; profiles made before readers hold the head (and the
        ensemble) only."""
        saved = self.data.get("readers")
        if saved:
            return {name: reader_from_dict(d) for name, d in saved.items()}
        out: dict[str, Any] = {"head": self.selector()}
        ens = self.ensemble()
        if ens is not None:
            out["ensemble"] = ens
        return out

    def reader(self) -> Any:
        """The chosen reader, ready to predict."""
        return self.readers()[self.reader_name]

    def baseline(self, name: str) -> Any:
        """A fitted baseline (``model_margin`` or ``hidden_probe``), or None."""
        saved = (self.data.get("baselines") or {}).get(name)
        if not saved:
            return None
        return (
            HiddenStateProbe.from_dict(saved)
            if name == "hidden_probe"
            else (HeadSelector.from_dict(saved))
        )

    @property
    def fingerprint(self) -> str:
        return self.data["model"].get("fingerprint", "")

    @property
    def digest(self) -> str:
        """Hash of the profile's content, for audit logs."""
        blob = json.dumps(self.data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def selector(self) -> HeadSelector:
        return HeadSelector.from_dict(self.data["selector"])

    def ensemble(self) -> TopKEnsemble | None:
        ens = self.data.get("ensemble")
        return TopKEnsemble.from_dict(ens) if ens else None

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
