"""Scoring recognition on labelled pictures (a folder of people: one subfolder per person).

Each picture counts once, by its largest face: named correctly, named wrongly (as another
person), unknown, or no face found. Subfolders that name no gallery person hold strangers:
for them "unknown" is the right answer and any name is a false naming.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

OUTCOMES = ("correct", "wrong", "unknown", "no_face")


@dataclass
class Tally:
    """How one person's pictures (or a group's) came out."""

    correct: int = 0
    wrong: int = 0
    unknown: int = 0
    no_face: int = 0

    @property
    def pictures(self) -> int:
        return self.correct + self.wrong + self.unknown + self.no_face

    def add(self, other: Tally) -> None:
        for outcome in OUTCOMES:
            setattr(self, outcome, getattr(self, outcome) + getattr(other, outcome))


def _area(box: Sequence[int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


class LabelledScore:
    """Counts outcomes per label; gallery_people are the names a face can be given."""

    def __init__(self, gallery_people: Sequence[str]):
        self.gallery_people = set(gallery_people)
        self.tallies: dict[str, Tally] = {}

    def add(self, label: str, faces: Sequence) -> None:
        """One picture filed under label, with its recognised faces (utils.recognition.tracking.RecognizedFace)."""
        tally = self.tallies.setdefault(label, Tally())
        if not faces:
            tally.no_face += 1
            return
        name = max(faces, key=lambda face: _area(face.box)).match.name
        if name is None:
            tally.unknown += 1
        elif name == label:
            tally.correct += 1
        else:
            tally.wrong += 1

    def _total(self, known: bool) -> Tally:
        total = Tally()
        for label, tally in self.tallies.items():
            if (label in self.gallery_people) == known:
                total.add(tally)
        return total

    def to_dict(self) -> dict:
        """JSON-ready: per person, the gallery people's total, and the strangers' total."""
        return {"people": {label: {**asdict(t), "in_gallery": label in self.gallery_people}
                           for label, t in sorted(self.tallies.items())},
                "known_total": asdict(self._total(True)), "strangers_total": asdict(self._total(False))}

    def table(self) -> str:
        """A plain-text table: one row per person, then the totals."""
        header = f"{'person':<24} {'pictures':>8} {'correct':>8} {'wrong':>8} {'unknown':>8} {'no face':>8}"
        lines = [header, "-" * len(header)]

        def row(name: str, t: Tally) -> str:
            return f"{name:<24} {t.pictures:>8} {t.correct:>8} {t.wrong:>8} {t.unknown:>8} {t.no_face:>8}"

        for label, tally in sorted(self.tallies.items()):
            lines.append(row(label if label in self.gallery_people else f"{label} (stranger)", tally))
        known, strangers = self._total(True), self._total(False)
        lines.append("-" * len(header))
        if known.pictures:
            lines.append(row("gallery people", known))
            faces = known.pictures - known.no_face
            lines.append(f"  named correctly: {known.correct} of {known.pictures} pictures "
                         f"({known.correct / max(faces, 1):.0%} of the {faces} with a face)")
        if strangers.pictures:
            lines.append(row("strangers", strangers))
            faces = strangers.pictures - strangers.no_face
            lines.append(f"  strangers named as someone: {strangers.wrong} of {faces} with a face "
                         f"({strangers.wrong / max(faces, 1):.0%})")
        if not known.pictures:
            lines.append("  no subfolder is named like a gallery person: every picture counts as a stranger's")
        return "\n".join(lines)
