"""Shortcut check: can a set be answered without reading the context?

Why: a head whose query-key alignment "predicts" the label is only evidence of reasoning when
the label cannot be read off the statement itself. Raw PARARULE-Plus fails this badly (every
negated statement is False), so before any scan qkscore fits a *statement-only* classifier (bag
of words, logistic regression, stratified k-fold) and flags the set when it scores at or above a
threshold (0.65 by default). The report lists the words the classifier leans on, so the user
sees *why* ("not" -> False), plus the label balance and the label rates within statements that
contain a negation word and those that do not.

Folds keep items that share a context together (stratified *group* k-fold): sets that ask
several statements about one context, or pair each statement with its negation, would otherwise
leak near-copies of a test statement into training and make the score mean little in either
direction.

Multiple-choice items are classified by their label string (the gold letter) from the question
and, by default, the option texts (which a model also sees); the context is never used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qkscore.data.items import Item
from qkscore.data.negation import has_negation
from qkscore.decision import decide

__all__ = [
    "AuditReport",
    "ShortcutReport",
    "audit_items",
    "find_shortcuts",
    "shallow_out_of_fold",
    "statement_model",
    "statement_out_of_fold",
]


@dataclass
class ShortcutReport:
    """Result of :func:`find_shortcuts`. ``flagged`` means "answerable without reasoning"."""

    count: int
    label_counts: dict[str, int]
    majority_label: str | None
    majority_rate: float
    negated: dict[str, Any]
    plain: dict[str, Any]
    negation_gap: float
    statement_only_accuracy: float | None
    accuracy_std: float | None
    fold_accuracies: list[float]
    folds_used: int
    grouped_by_context: bool
    cues: list[tuple[str, str, float]]
    top_words: dict[str, list[tuple[str, float]]]
    threshold: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shallow_accuracy: float | None = None
    shallow_fold_accuracies: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_words"] = {k: [[w, c] for w, c in v] for k, v in self.top_words.items()}
        d["cues"] = [list(c) for c in self.cues]
        return d

    def summary(self) -> str:
        """A few human lines for the CLI."""
        acc = (
            "n/a"
            if self.statement_only_accuracy is None
            else f"{self.statement_only_accuracy:.3f}"
            + (f" ± {self.accuracy_std:.3f}" if self.accuracy_std is not None else "")
        )
        shallow = "n/a" if self.shallow_accuracy is None else f"{self.shallow_accuracy:.3f}"
        lines = [
            f"items: {self.count}  labels: {self.label_counts}",
            f"statement-only accuracy ({self.folds_used}-fold): {acc}  "
            f"(majority {self.majority_rate:.3f}, threshold {self.threshold:.2f})",
            f"shallow context-statement matching ({self.folds_used}-fold): {shallow}",
            f"label rates with negation: {self.negated['rates']}  without: {self.plain['rates']}",
        ]
        for label, words in self.top_words.items():
            lines.append(f"words predicting {label}: " + ", ".join(w for w, _ in words[:8]))
        verdict = "FLAGGED: answerable without reasoning" if self.flagged else "passes"
        lines.append(verdict + ("" if not self.reasons else " - " + "; ".join(self.reasons)))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _input_text(item: Item, include_options: bool) -> str:
    if include_options and item.is_multiple_choice:
        return item.statement + " " + " ".join(item.options)
    return item.statement


def _rates(labels: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    counts = Counter(labels)
    total = len(labels)
    return {
        "n": total,
        "counts": {c: counts.get(c, 0) for c in classes},
        "rates": {c: round(counts.get(c, 0) / total, 4) if total else 0.0 for c in classes},
    }


def find_shortcuts(
    items: Iterable[Item],
    folds: int = 5,
    seed: int = 0,
    *,
    threshold: float = 0.65,
    top_k: int = 10,
    include_options: bool = True,
    group_by_context: bool = True,
) -> ShortcutReport:
    """Look for statement-only shortcuts in a set; see the module docstring for why.

    ``folds``-fold stratified cross-validation (shuffled with ``seed``; grouped by context when
    ``group_by_context`` and there are enough distinct contexts) of CountVectorizer +
    LogisticRegression on the statement text alone. ``cues`` lists the strongest words overall
    as ``(word, label it points to, weight)``. Sets too small to cross-validate get a
    report with ``statement_only_accuracy=None`` and a note instead of an exception; a set with
    a single label is flagged (a constant answer is right every time).
    """
    items = list(items)
    labels = [it.label for it in items]  # the gold letter for multiple choice
    texts = [_input_text(it, include_options) for it in items]
    counts = Counter(labels)
    classes = sorted(counts)
    n = len(items)
    notes: list[str] = []
    reasons: list[str] = []

    majority_label, majority_n = counts.most_common(1)[0] if counts else (None, 0)
    majority_rate = majority_n / n if n else 0.0
    neg_mask = [has_negation(it.statement) for it in items]
    negated = _rates([lab for lab, m in zip(labels, neg_mask, strict=True) if m], classes)
    plain = _rates([lab for lab, m in zip(labels, neg_mask, strict=True) if not m], classes)
    gap = 0.0
    if negated["n"] and plain["n"]:
        gap = max(abs(negated["rates"][c] - plain["rates"][c]) for c in classes)

    accuracy: float | None = None
    std: float | None = None
    fold_acc: list[float] = []
    shallow_folds: list[float] | None = None
    folds_used = 0
    top_words: dict[str, list[tuple[str, float]]] = {}
    cues: list[tuple[str, str, float]] = []
    grouped = False

    if n == 0:
        notes.append("no items to check")
    elif len(classes) == 1:
        accuracy = 1.0
        notes.append(f"every item has label {classes[0]!r}: a constant answer is always right")
    elif n < folds:
        notes.append(
            f"only {n} items, fewer than folds={folds}: too few to cross-validate a "
            "statement-only classifier (the check needs at least as many items as folds)"
        )
    else:
        smallest = min(counts.values())
        folds_used = _folds_for(items, folds) or 0
        if not folds_used:
            rare = [c for c in classes if counts[c] < 2]
            notes.append(
                f"label(s) {rare} occur fewer than 2 times: too few to cross-validate "
                "a statement-only classifier"
            )
        else:
            if folds_used < folds:
                notes.append(
                    f"folds reduced from {folds} to {folds_used}: the rarest label has "
                    f"only {smallest} items"
                )
            groups = _context_groups(items, folds_used) if group_by_context else None
            distinct = len({it.context for it in items})
            if groups is not None:
                grouped = distinct < n
            elif group_by_context:
                notes.append(f"only {distinct} distinct contexts: folds not grouped by context")
            fold_acc, top_words, cues = _cross_validate(
                texts, labels, folds_used, seed, top_k, groups
            )
            accuracy = sum(fold_acc) / len(fold_acc)
            mean = accuracy
            std = (sum((a - mean) ** 2 for a in fold_acc) / len(fold_acc)) ** 0.5
            shallow_folds = _shallow_cross_validate(items, folds_used, seed, groups)
            if shallow_folds is None:
                notes.append("shallow matching applies to True/False items only")

    shallow_folds = shallow_folds or []
    shallow = sum(shallow_folds) / len(shallow_folds) if shallow_folds else None
    flagged = accuracy is not None and accuracy >= threshold
    if flagged:
        reasons.append(
            f"a classifier that sees only the statement scores {accuracy:.3f} >= {threshold:.2f}"
        )
    if shallow is not None and shallow >= threshold:
        flagged = True
        reasons.append(
            f"shallow context-statement matching (word overlap and polarity, no reasoning) "
            f"scores {shallow:.3f} >= {threshold:.2f}"
        )
        strong = [c for c in cues[:3] if c[2] >= 0.25 * cues[0][2]] if cues else []
        if strong:
            reasons.append(
                "strongest cues: " + ", ".join(f"{w!r} -> {lab}" for w, lab, _ in strong)
            )
    if majority_rate >= threshold and n:
        notes.append(f"label {majority_label!r} alone covers {majority_rate:.1%} of items")
    if gap >= 0.2:
        notes.append(
            f"label rates differ by {gap:.2f} between statements with and without negation"
        )

    return ShortcutReport(
        count=n,
        label_counts={c: counts[c] for c in classes},
        majority_label=majority_label,
        majority_rate=round(majority_rate, 4),
        negated=negated,
        plain=plain,
        negation_gap=round(gap, 4),
        statement_only_accuracy=None if accuracy is None else round(accuracy, 4),
        accuracy_std=None if std is None else round(std, 4),
        fold_accuracies=[round(a, 4) for a in fold_acc],
        folds_used=folds_used,
        grouped_by_context=grouped,
        cues=cues,
        top_words=top_words,
        threshold=threshold,
        flagged=flagged,
        reasons=reasons,
        notes=notes,
        shallow_accuracy=None if shallow is None else round(shallow, 4),
        shallow_fold_accuracies=[round(a, 4) for a in shallow_folds],
    )


def _splits(y: Any, folds: int, seed: int, groups: Sequence[str] | None):
    """The check's folds: stratified, grouped by context when groups are given."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    x = np.zeros(len(y))
    if groups is not None:
        return StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            x, y, groups=np.asarray(groups, dtype=object)
        )
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y)


def _shallow_cross_validate(
    items: Sequence[Item], folds: int, seed: int, groups: Sequence[str] | None
) -> list[float] | None:
    """Fold accuracies of the shallow matcher (None where it does not apply)."""
    oof = _shallow_folds(items, folds, seed, groups)
    if oof is None:
        return None
    proba, fold = oof
    correct = decide(proba) == [it.answer_index for it in items]
    return [float(correct[fold == f].mean()) for f in range(folds)]


def _shallow_folds(
    items: Sequence[Item], folds: int, seed: int, groups: Sequence[str] | None
) -> tuple[Any, Any] | None:
    """Out-of-fold option probabilities of the shallow matcher and each item's fold."""
    import numpy as np

    from qkscore.data.shallow import ShallowMatcher, supports_shallow

    if not supports_shallow(items):
        return None
    y = np.array([it.answer_index for it in items])
    proba = np.zeros((len(items), len(items[0].options)))
    fold = np.full(len(items), -1)
    for f, (train, test) in enumerate(_splits(y, folds, seed, groups)):
        clf = ShallowMatcher(random_state=seed).fit([items[i] for i in train], y[train])
        p = clf.predict_proba([items[i] for i in test])
        proba[test, : p.shape[1]] = p
        fold[test] = f
    return proba, fold


def shallow_out_of_fold(items: Sequence[Item], folds: int = 5, seed: int = 0) -> Any | None:
    """Cross-validated option probabilities ``[items, options]`` of shallow matching, each item
    scored by a matcher fitted without it (or its context), with the folds of
    :func:`find_shortcuts`; None where shallow matching does not apply. For intervals and AUROC
    (``qkscore.stats``) on top of the audit's mean fold accuracy."""
    items = list(items)
    folds_used = _folds_for(items, folds)
    if folds_used is None:
        return None
    groups = _context_groups(items, folds_used)
    oof = _shallow_folds(items, folds_used, seed, groups)
    return None if oof is None else oof[0]


def _context_groups(items: Sequence[Item], folds: int) -> list[str] | None:
    """Folds keep a context whole when there are enough distinct contexts to do so."""
    return [it.context for it in items] if len({it.context for it in items}) >= folds * 2 else None


def statement_model() -> Any:
    """The statement-only classifier: bag of words, logistic regression."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    # Single-letter tokens too: "a" vs "an" or a lone option letter can be a cue.
    return make_pipeline(
        CountVectorizer(token_pattern=r"(?u)\b\w+\b", lowercase=True),
        LogisticRegression(max_iter=2000),
    )


def _statement_folds(
    texts: Sequence[str],
    labels: Sequence[str],
    folds: int,
    seed: int,
    groups: Sequence[str] | None,
) -> tuple[Any, Any]:
    """Out-of-fold labels of the statement-only classifier and each item's fold."""
    import numpy as np

    x = np.asarray(texts, dtype=object)
    y = np.asarray(labels, dtype=object)
    pred = np.empty(len(y), dtype=object)
    fold = np.full(len(y), -1)
    for f, (train, test) in enumerate(_splits(y, folds, seed, groups)):
        pred[test] = statement_model().fit(x[train], y[train]).predict(x[test])
        fold[test] = f
    return pred, fold


def statement_out_of_fold(
    items: Sequence[Item], folds: int = 5, seed: int = 0, *, include_options: bool = True
) -> list[str] | None:
    """The statement-only classifier's cross-validated label for every item (each predicted by
    a classifier fitted without it or its context, with the folds of :func:`find_shortcuts`),
    for breakdowns by depth or rule; None when the set is too small to cross-validate."""
    items = list(items)
    folds_used = _folds_for(items, folds)
    if folds_used is None:
        return None
    texts = [_input_text(it, include_options) for it in items]
    pred, _ = _statement_folds(
        texts, [it.label for it in items], folds_used, seed, _context_groups(items, folds_used)
    )
    return [str(p) for p in pred]


def _folds_for(items: Sequence[Item], folds: int) -> int | None:
    """The folds :func:`find_shortcuts` would use (fewer for a rare label), or None."""
    counts = Counter(it.label for it in items)
    folds_used = min(folds, min(counts.values(), default=0))
    if len(counts) < 2 or folds_used < 2 or len(items) < folds:
        return None
    return folds_used


def _cross_validate(
    texts: Sequence[str],
    labels: Sequence[str],
    folds: int,
    seed: int,
    top_k: int,
    groups: Sequence[str] | None = None,
) -> tuple[list[float], dict[str, list[tuple[str, float]]], list[tuple[str, str, float]]]:
    """Fold accuracies; the top words per label and the strongest cues overall, from a model
    refit on all items."""
    import numpy as np

    y = np.asarray(labels, dtype=object)
    pred, fold = _statement_folds(texts, labels, folds, seed, groups)
    accs = [float((pred[fold == f] == y[fold == f]).mean()) for f in range(folds)]

    full = statement_model().fit(np.asarray(texts, dtype=object), y)
    vec, lr = full.steps[0][1], full.steps[1][1]
    vocab = vec.get_feature_names_out()
    top: dict[str, list[tuple[str, float]]] = {}
    cues: list[tuple[str, str, float]] = []
    if len(lr.classes_) == 2:
        coef0 = lr.coef_[0]
        for i in np.argsort(-np.abs(coef0))[:top_k]:
            label = lr.classes_[1] if coef0[i] > 0 else lr.classes_[0]
            cues.append((str(vocab[i]), str(label), round(float(abs(coef0[i])), 4)))
        coef = lr.coef_[0]
        order = np.argsort(coef)
        top[str(lr.classes_[1])] = [
            (str(vocab[i]), round(float(coef[i]), 4)) for i in order[::-1][:top_k] if coef[i] > 0
        ]
        top[str(lr.classes_[0])] = [
            (str(vocab[i]), round(float(-coef[i]), 4)) for i in order[:top_k] if coef[i] < 0
        ]
    else:
        for row, cls in zip(lr.coef_, lr.classes_, strict=True):
            order = np.argsort(row)[::-1][:top_k]
            top[str(cls)] = [(str(vocab[i]), round(float(row[i]), 4)) for i in order if row[i] > 0]
        best = lr.coef_.max(axis=0)
        for i in np.argsort(-best)[:top_k]:
            label = lr.classes_[int(np.argmax(lr.coef_[:, i]))]
            cues.append((str(vocab[i]), str(label), round(float(best[i]), 4)))
    return accs, top, cues


#: The names from before the shortcut check was told apart from the audit log (one release).
AuditReport = ShortcutReport
audit_items = find_shortcuts
