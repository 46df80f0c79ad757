"""Profiles: what calibration chose, stored as plain JSON that any later step can trust.

A profile pins the model (fingerprint), the template and the scoring settings it was made with;
judging an item with another model or template would silently mean nothing, so loaders of a
profile refuse such a mismatch with a clear error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkscore.heads import HeadSelector, TopKEnsemble, parse_head_name


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
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"profile {p} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}:{err.lineno}: not valid profile JSON ({err.msg})") from None
        for key in ("model", "template", "selector", "head"):
            if key not in data:
                raise ValueError(f"{p}: field '{key}' missing: not a qkscore profile")
        return cls(data, p)

    def save(self, path: str | Path) -> None:
        from qkscore.run import write_json

        self.path = Path(path)
        write_json(self.path, self.data)

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
